//! A portal on real MLS, end to end: legacy messages through router + portal + `MlsRooms` (encrypt, durable, hub
//! sequencing), `mls_identity = "shared"` beside `"per-user"`, in the same run.
//!
//! `PORTAL_BENCH_USERS` (default 10) legacy users each say `PORTAL_BENCH_MESSAGES` (default 50) lines, one at a
//! time (each awaited until the portal accepted it, i.e. until the room of record gave it its MIMI id), users
//! interleaved. Printed per mode: messages/s, the latency of a user's first line (per-user: it includes the
//! commit adding their leaf) and of the others (p50 / p99 in ms), and the shared/per-user throughput ratio.
//!
//! The MLS group's member count at the end is printed too (`leaves`). `PORTAL_BENCH_MODES=shared` runs one mode.
//!
//! Run: `cargo bench -p bridge-core --bench portal_mls`.

mod support;

use bridge_api::{AccountContext, AccountId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::router::RouterConfig;
use bridge_testkit::loopback::LoopbackNetwork;
use mimi_mls::LeafPolicy;
use std::time::{Duration, Instant};
use support::{DOMAIN, mls_router, pct};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

struct Figures {
    msgs_per_s: f64,
    first: Vec<f64>,
    rest: Vec<f64>,
    /// Members of the portal's MLS group at the end (leaves: the bridge's, and one per user in per-user mode).
    leaves: usize,
}

async fn run(mode: MlsIdentity, users: usize, per_user: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let (router, room, _) = mls_router(dir.path(), RouterConfig::new(DOMAIN)).await;
    let id = AccountId::parse("lb.irc").expect("account");
    let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), DOMAIN));
    router.add_account(net.clone());
    let portal = PortalId::new("bench").expect("portal");
    router.create_portal(PortalRecord { id: portal.clone(), mls_identity: mode }).await.expect("portal");
    router.link(net.leg("#bench"), &portal).await.expect("link");
    room.set_leaf_policy(&portal, LeafPolicy { idle_after: Duration::from_secs(3600), max_leaves: users.max(1) });
    room.ensure_portal(&portal).await.expect("group");

    let (mut first, mut rest) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for i in 0..per_user {
        for u in 0..users {
            let t = Instant::now();
            net.say("#bench", &format!("user{u}"), &format!("line {i} from user {u}")).await.1.expect("accepted");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if i == 0 { first.push(ms) } else { rest.push(ms) }
        }
    }
    let msgs_per_s = (users * per_user) as f64 / start.elapsed().as_secs_f64();
    let leaves = room.members(&portal).await.expect("members").len();
    router.shutdown().await;
    room.shutdown().await;
    first.sort_by(f64::total_cmp);
    rest.sort_by(f64::total_cmp);
    Figures { msgs_per_s, first, rest, leaves }
}

fn main() {
    let users = env_usize("PORTAL_BENCH_USERS", 10);
    let per_user = env_usize("PORTAL_BENCH_MESSAGES", 50);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("portal on MLS: {users} legacy users x {per_user} lines, one at a time (redb)");
    println!(
        "{:>9} {:>10} {:>14} {:>14} {:>13} {:>13} {:>8}",
        "mode", "msg/s", "first p50 ms", "first p99 ms", "rest p50 ms", "rest p99 ms", "leaves"
    );
    // `PORTAL_BENCH_MODES=shared` (or `per-user`) runs one mode only: a room of thousands of users in shared mode,
    // where per-user mode would commit a leaf for each.
    let modes = std::env::var("PORTAL_BENCH_MODES").unwrap_or_else(|_| "shared,per-user".into());
    let mut rates = Vec::new();
    for (name, mode) in [("shared", MlsIdentity::Shared), ("per-user", MlsIdentity::PerUser)] {
        if !modes.split(',').any(|m| m.trim() == name) {
            continue;
        }
        let f = rt.block_on(run(mode, users, per_user));
        println!(
            "{name:>9} {:>10.0} {:>14.2} {:>14.2} {:>13.2} {:>13.2} {:>8}",
            f.msgs_per_s,
            pct(&f.first, 0.5),
            pct(&f.first, 0.99),
            pct(&f.rest, 0.5),
            pct(&f.rest, 0.99),
            f.leaves
        );
        rates.push(f.msgs_per_s);
    }
    if let [shared, per_user] = rates[..] {
        println!("per-user / shared throughput: {:.2}", per_user / shared);
    }
}
