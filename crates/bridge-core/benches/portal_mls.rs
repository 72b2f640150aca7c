//! A portal on real MLS, end to end: legacy messages through router + portal + `MlsRooms` (encrypt, durable, hub
//! sequencing), `mls_identity = "shared"` beside `"per-user"`, in the same run.
//!
//! `PORTAL_BENCH_USERS` (default 10) legacy users each say `PORTAL_BENCH_MESSAGES` (default 50) lines, one at a
//! time (each awaited until the portal accepted it, i.e. until the room of record gave it its MIMI id), users
//! interleaved. Printed per mode: messages/s, the latency of a user's first line (per-user: it includes the
//! commit adding their leaf) and of the others (p50 / p99 in ms), and the shared/per-user throughput ratio.
//!
//! The MLS group's member count at the end is printed too (`leaves`), and how many lines went out from the shared
//! leaf because their user had no leaf yet (`shared`: with batched adds, a new speaker's first lines). Modes:
//! `shared`, `per-user` (leaves added in batches, the default) and `per-user-1` (`add_batch = 1`: each new speaker's
//! leaf added before their first line); `PORTAL_BENCH_MODES=shared` runs one mode.
//!
//! Run: `cargo bench -p bridge-core --bench portal_mls`.

mod support;

use bridge_api::{AccountContext, AccountId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::router::RouterConfig;
use bridge_testkit::loopback::LoopbackNetwork;
use mimi_mls::{DEFAULT_ADD_BATCH, LeafPolicy};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Per-user mode with batched adds: lines accepted before their user's leaf was there (the shared leaf spoke
    /// for them), as a task polling the leaves every 5 ms saw it (so a line accepted just after may count too).
    from_shared: usize,
}

async fn run(mode: MlsIdentity, add_batch: usize, users: usize, per_user: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let (router, room, _) = mls_router(dir.path(), RouterConfig::new(DOMAIN)).await;
    let id = AccountId::parse("lb.irc").expect("account");
    let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), DOMAIN));
    router.add_account(net.clone());
    let portal = PortalId::new("bench").expect("portal");
    router.create_portal(PortalRecord { id: portal.clone(), mls_identity: mode }).await.expect("portal");
    router.link(net.leg("#bench"), &portal).await.expect("link");
    let policy = LeafPolicy { idle_after: Duration::from_secs(3600), max_leaves: users.max(1), add_batch };
    room.set_leaf_policy(&portal, policy);
    room.ensure_portal(&portal).await.expect("group");

    let (mut first, mut rest) = (Vec::new(), Vec::new());
    let per_user_mode = matches!(mode, MlsIdentity::PerUser);
    // When each user's leaf appeared, seen by a task polling beside the lines (a line accepted before then went out
    // from the shared leaf).
    let appeared = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let poller = per_user_mode.then(|| {
        let (room, portal, appeared, done) = (room.clone(), portal.clone(), appeared.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let users = room.leaf_users(&portal).await.expect("leaves");
                let now = Instant::now();
                {
                    let mut seen = appeared.lock().expect("lock");
                    for u in users {
                        seen.entry(u).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let mut said = Vec::with_capacity(users * per_user);
    let start = Instant::now();
    for i in 0..per_user {
        for u in 0..users {
            let user = format!("user{u}");
            let t = Instant::now();
            net.say("#bench", &user, &format!("line {i} from user {u}")).await.1.expect("accepted");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if i == 0 {
                first.push(ms)
            } else {
                rest.push(ms)
            }
            said.push((user, Instant::now()));
        }
    }
    let msgs_per_s = (users * per_user) as f64 / start.elapsed().as_secs_f64();
    // Batched adds: the last batch may still be on its way.
    let expected = if per_user_mode { users + 1 } else { 1 };
    let deadline = Instant::now() + Duration::from_secs(30);
    while room.members(&portal).await.expect("members").len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leaves = room.members(&portal).await.expect("members").len();
    done.store(true, Ordering::SeqCst);
    if let Some(p) = poller {
        p.await.expect("poller");
    }
    let appeared = appeared.lock().expect("lock").clone();
    let from_shared = if per_user_mode && add_batch > 1 {
        let leaf_of = |user: &str| appeared.iter().find(|(u, _)| u.ends_with(&format!("~{user}"))).map(|(_, t)| *t);
        said.iter().filter(|(user, t)| leaf_of(user).is_none_or(|leaf| *t < leaf)).count()
    } else {
        // Without batching, a line waits for its user's leaf and goes out from it.
        0
    };
    router.shutdown().await;
    room.shutdown().await;
    first.sort_by(f64::total_cmp);
    rest.sort_by(f64::total_cmp);
    Figures { msgs_per_s, first, rest, leaves, from_shared }
}

fn main() {
    let users = env_usize("PORTAL_BENCH_USERS", 10);
    let per_user = env_usize("PORTAL_BENCH_MESSAGES", 50);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!("portal on MLS: {users} legacy users x {per_user} lines, one at a time (redb)");
    println!(
        "{:>10} {:>10} {:>14} {:>14} {:>13} {:>13} {:>8} {:>8}",
        "mode", "msg/s", "first p50 ms", "first p99 ms", "rest p50 ms", "rest p99 ms", "leaves", "shared"
    );
    // `PORTAL_BENCH_MODES=shared` (or `per-user`) runs one mode only: a room of thousands of users in shared mode,
    // where per-user mode would commit a leaf for each.
    let modes = std::env::var("PORTAL_BENCH_MODES").unwrap_or_else(|_| "shared,per-user,per-user-1".into());
    let mut rates = Vec::new();
    for (name, mode, batch) in [
        ("shared", MlsIdentity::Shared, DEFAULT_ADD_BATCH),
        ("per-user", MlsIdentity::PerUser, DEFAULT_ADD_BATCH),
        ("per-user-1", MlsIdentity::PerUser, 1),
    ] {
        if !modes.split(',').any(|m| m.trim() == name) {
            continue;
        }
        let f = rt.block_on(run(mode, batch, users, per_user));
        println!(
            "{name:>10} {:>10.0} {:>14.2} {:>14.2} {:>13.2} {:>13.2} {:>8} {:>8}",
            f.msgs_per_s,
            pct(&f.first, 0.5),
            pct(&f.first, 0.99),
            pct(&f.rest, 0.5),
            pct(&f.rest, 0.99),
            f.leaves,
            f.from_shared
        );
        rates.push((name, f.msgs_per_s));
    }
    if let Some((_, shared)) = rates.iter().find(|(n, _)| *n == "shared") {
        for (name, rate) in rates.iter().filter(|(n, _)| *n != "shared") {
            println!("{name} / shared throughput: {:.2}", rate / shared);
        }
    }
}
