//! One network to another through an MLS portal: how long a legacy message takes from one loopback leg until it
//! is delivered on the other (publish to the MLS group, sequenced by the hub, recorded by the portal, handed to
//! the other leg), messages one at a time, on redb — with the portal handing deliveries to the legs while its
//! record becomes durable (`deliver_before_durable = true`, the default) beside waiting for that record first
//! (`false`), in the same run. Printed per setting: p50 / p99 in ms, and the store's durable writes and batches
//! per message.
//!
//! `DELIVER_BENCH_MESSAGES` (default 500) messages per setting, after 20 to warm up.
//! Run: `cargo bench -p bridge-core --bench deliver`.

mod support;

use bridge_api::{AccountContext, AccountId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::router::RouterConfig;
use bridge_testkit::loopback::LoopbackNetwork;
use std::time::{Duration, Instant};
use support::{DOMAIN, mls_router, pct};

const WARM_UP: usize = 20;

struct Figures {
    /// Milliseconds from the message said on one leg to its delivery on the other, sorted.
    latency: Vec<f64>,
    writes_per_msg: f64,
    batches_per_msg: f64,
}

async fn run(deliver_before_durable: bool, messages: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = RouterConfig::new(DOMAIN);
    cfg.deliver_before_durable = deliver_before_durable;
    let (router, room, store) = mls_router(dir.path(), cfg).await;
    let net = |name: &str| {
        let id = AccountId::parse(name).expect("account");
        let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), DOMAIN));
        router.add_account(net.clone());
        net
    };
    let (from, to) = (net("lb.xmpp"), net("lb.irc"));
    let portal = PortalId::new("bench").expect("portal");
    router.create_portal(PortalRecord { id: portal.clone(), mls_identity: MlsIdentity::Shared }).await.expect("portal");
    router.link(from.leg("#bench"), &portal).await.expect("link");
    router.link(to.leg("#bench"), &portal).await.expect("link");
    room.ensure_portal(&portal).await.expect("group");

    let stats = store.stats();
    let mut latency = Vec::new();
    let (mut writes, mut batches) = (0, 0);
    for i in 0..WARM_UP + messages {
        if i == WARM_UP {
            (writes, batches) = (stats.writes(), stats.batches());
        }
        let t = Instant::now();
        let said = {
            let from = from.clone();
            tokio::spawn(async move { from.say("#bench", "alice", &format!("line {i}")).await.1 })
        };
        let got = to.wait_delivered(i + 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), i + 1, "message {i} was not delivered");
        if i >= WARM_UP {
            latency.push(t.elapsed().as_secs_f64() * 1e3);
        }
        said.await.expect("task").expect("accepted");
    }
    let n = messages as f64;
    let writes_per_msg = (stats.writes() - writes) as f64 / n;
    let batches_per_msg = (stats.batches() - batches) as f64 / n;
    router.shutdown().await;
    room.shutdown().await;
    latency.sort_by(f64::total_cmp);
    Figures { latency, writes_per_msg, batches_per_msg }
}

fn main() {
    let messages = std::env::var("DELIVER_BENCH_MESSAGES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("leg to leg through an MLS portal: {messages} messages, one at a time (redb)");
    println!("{:>24} {:>8} {:>8} {:>13} {:>14}", "setting", "p50 ms", "p99 ms", "writes / msg", "batches / msg");
    let mut p50 = Vec::new();
    for (name, early) in [("deliver_before_durable", true), ("after the record", false)] {
        let f = rt.block_on(run(early, messages));
        println!(
            "{name:>24} {:>8.3} {:>8.3} {:>13.2} {:>14.2}",
            pct(&f.latency, 0.5),
            pct(&f.latency, 0.99),
            f.writes_per_msg,
            f.batches_per_msg
        );
        p50.push(pct(&f.latency, 0.5));
    }
    if let [early, late] = p50[..] {
        println!("p50 ratio, before durable / after the record: {:.2}", early / late);
    }
}
