//! "SIGTERM under load loses nothing", in process.
//!
//! No connector is built into the binary yet, so message load cannot reach the real binary from outside. This test
//! runs the daemon's own lifecycle ([`Daemon::start`] / [`Daemon::shutdown`], the same code `mimi-bridge run` runs
//! on SIGTERM: readiness, admin API, watchdog probe, router drain, account shutdown, store flush) on a real data
//! directory, with two in-memory loopback accounts from `bridge-core`'s testkit attached to its router. Eight
//! senders flood one leg while the other leg is down (so a backlog builds in the outbox) and comes back up;
//! shutdown starts mid-flood. A second daemon on the same data directory must then deliver every message the
//! first one acknowledged. The signal → shutdown → exit code path of the real binary is covered by
//! `tests/daemon.rs` and `tests/admin_api.rs`.

use async_trait::async_trait;
use bridge_api::AccountId;
use bridge_api::capability::{Capabilities, Grade};
use bridge_api::connector::{Account, AccountContext, ConnectorError, Delivery, Health, SendError};
use bridge_api::event::{OutboundEvent, OutboundKind};
use bridge_core::router::{Accepted, RouteError};
use bridge_testkit::loopback::LoopbackNetwork;
use mimi_bridge::config::Config;
use mimi_bridge::daemon::Daemon;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn config(dir: &Path, shutdown_timeout: u64) -> Config {
    let text = format!(
        "[bridge]\ndomain = \"bridge.example.org\"\ndata_dir = {:?}\nshutdown_timeout = {shutdown_timeout}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[mimi]\nlisten = \"127.0.0.1:0\"\n[[portal]]\nname = \"load\"\n",
        dir.join("data").display().to_string()
    );
    Config::parse(&dir.join("config.toml"), &text).expect("config")
}

fn loopback(d: &Daemon, name: &str) -> Arc<LoopbackNetwork> {
    let id = AccountId::new("loop", name).expect("id");
    let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, d.router().clone(), "bridge.example.org"));
    d.router().add_account(net.clone());
    net
}

fn bodies(events: &[OutboundEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            OutboundKind::Message { draft, .. } => Some(draft.body.clone()),
            _ => None,
        })
        .collect()
}

/// One admin API call, authenticated with the token the daemon wrote into `data_dir`.
async fn admin(
    d: &Daemon,
    data_dir: &Path,
    method: &'static str,
    path: &'static str,
    body: Option<String>,
) -> crate::common::Http {
    let addr = d.admin_addr();
    let token = std::fs::read_to_string(data_dir.join("admin.token")).expect("token").trim().to_owned();
    tokio::task::spawn_blocking(move || crate::common::http(addr, method, path, Some(&token), body.as_deref()))
        .await
        .expect("join")
        .expect("http")
}

async fn start(cfg: &Config) -> Daemon {
    Daemon::start(cfg, &[]).await.expect("daemon starts")
}

#[test]
fn shutdown_under_load_loses_nothing_acknowledged() {
    let _heavy = crate::common::heavy();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(under_load());
}

async fn under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), 20);
    let d = start(&cfg).await;
    let a = loopback(&d, "a");
    let b = loopback(&d, "b");
    for (account, room) in [("loop.a", "#in"), ("loop.b", "#out")] {
        let body = format!(r#"{{"portal":"load","account":"{account}","room":"{room}"}}"#);
        let r = admin(&d, &cfg.bridge.data_dir, "POST", "/v1/link", Some(body)).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    b.down.store(true, Ordering::Relaxed);

    // Acknowledged so far by all senders: the flood runs until enough is queued, however fast this machine is.
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (a, acks) = (a.clone(), acks.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut refused = Vec::new();
                for i in 0.. {
                    let text = format!("m-{t}-{i}");
                    match a.say("#in", &format!("user{t}"), &text).await.1 {
                        Ok(Accepted::Bridged(_)) => {
                            acked.push(text);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => panic!("{text}: unexpected {other:?}"),
                        Err(e) => {
                            refused.push(e);
                            break;
                        }
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acks.load(Ordering::Relaxed) <= 100 {
        assert!(tokio::time::Instant::now() < deadline, "the flood is acknowledged: {acks:?} in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.down.store(false, Ordering::Relaxed); // the backlog starts draining…
    let flowing = b.wait_delivered(10, Duration::from_secs(10)).await;
    assert!(flowing.len() >= 10, "deliveries resumed");
    let metrics_text = admin(&d, &cfg.bridge.data_dir, "GET", "/metrics", None).await.body;
    b.down.store(true, Ordering::Relaxed); // …stalls again, so a backlog is certainly in the outbox…
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut closed = d.store_closed();
    d.shutdown().await.expect("shutdown finishes within the bound"); // …and shutdown comes mid-flood.

    let mut acked = Vec::new();
    for s in senders {
        let (ok, refused) = s.await.expect("sender");
        acked.extend(ok);
        for e in refused {
            assert!(matches!(e, RouteError::Closed), "after shutdown only Closed is acceptable: {e:?}");
        }
    }
    let first = bodies(&b.delivered());
    // The accounts hold router handles (and so the store): let them go, as the process's exit would.
    drop((a, b));
    tokio::time::timeout(Duration::from_secs(10), closed.wait_for(|c| *c))
        .await
        .expect("the store closes once the last handle is gone")
        .expect("closed signal");
    assert!(acked.len() > 100, "the load was real: {} acknowledged", acked.len());
    assert!(
        first.len() < acked.len(),
        "shutdown came before the backlog was gone ({} of {})",
        first.len(),
        acked.len()
    );

    let families = crate::common::parse_prometheus(&metrics_text).unwrap_or_else(|e| panic!("{e}\n{metrics_text}"));
    let kind = |n: &str| families.get(n).map(|f| f.kind.clone()).unwrap_or_default();
    assert_eq!(kind("mimi_bridge_messages_in_total"), "counter", "{metrics_text}");
    assert_eq!(kind("mimi_bridge_messages_out_total"), "counter", "{metrics_text}");
    assert_eq!(kind("mimi_bridge_delivery_latency_seconds"), "histogram", "{metrics_text}");
    assert_eq!(kind("mimi_bridge_portal_queue_depth"), "gauge", "{metrics_text}");
    assert!(metrics_text.contains(r#"mimi_bridge_messages_in_total{leg="loop.a/#in",outcome="bridged"}"#));
    assert!(metrics_text.contains(r#"mimi_bridge_errors_total{kind="delivery_delayed"}"#), "{metrics_text}");

    // Restart on the same data directory: the outbox backlog goes out.
    let d = start(&cfg).await;
    let b2 = loopback(&d, "b");
    let want: HashSet<&String> = acked.iter().collect();
    let mut second;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        second = bodies(&b2.delivered());
        let got: HashSet<&String> = first.iter().chain(second.iter()).collect();
        if want.is_subset(&got) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: HashSet<&String> = first.iter().chain(second.iter()).collect();
    let lost: Vec<&&String> = want.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        want.len(),
        &lost[..lost.len().min(5)]
    );
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for m in first.iter().chain(second.iter()) {
        *counts.entry(m).or_default() += 1;
    }
    println!("acknowledged {}, delivered before shutdown {}, after restart {}", acked.len(), first.len(), second.len());
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{} messages delivered twice, e.g. {:?}", dups.len(), &dups[..dups.len().min(5)]);
    d.shutdown().await.expect("second shutdown");
}

/// An account whose disconnect never finishes.
struct Stuck {
    id: AccountId,
    health: tokio::sync::watch::Sender<Health>,
}

#[async_trait]
impl Account for Stuck {
    fn id(&self) -> &AccountId {
        &self.id
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::all(Grade::Full)
    }
    async fn join(&self, _room: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn leave(&self, _room: &str) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn send(&self, _event: &OutboundEvent) -> Result<Delivery, SendError> {
        Ok(Delivery::default())
    }
    fn health(&self) -> tokio::sync::watch::Receiver<Health> {
        self.health.subscribe()
    }
    async fn shutdown(&self) {
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_cannot_finish_is_bounded_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start(&config(dir.path(), 1)).await;
    let (health, _) = tokio::sync::watch::channel(Health::Connected);
    d.router().add_account(Arc::new(Stuck { id: AccountId::new("loop", "stuck").expect("id"), health }));
    let started = std::time::Instant::now();
    let r = d.shutdown().await;
    let took = started.elapsed();
    let e = r.expect_err("the stuck account makes shutdown time out");
    assert!(e.to_string().contains("did not finish within 1s"), "{e}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "{took:?}");
}
