//! Portals woken by traffic: what a line into each of N closed portals, within their idle time, costs in memory,
//! with the bound on open portals (`MlsRooms::set_max_open`) or without it.
//!
//! `WOKEN_BENCH_PORTALS` (default 2000) portals with one loopback leg each are made (a first start: each opens to
//! make its group and room, and closes again), then a line goes into each, one at a time, twice over. Printed after
//! the start and after each pass: the process's RSS and its peak so far (`VmRSS`, `VmHWM`), the portals open, and the
//! pass's lines/s and how long a line took to be accepted (p50 / p99). `WOKEN_BENCH_MAX_OPEN` sets the bound (default
//! the daemon's, 1000; 0: none); run once per setting, since freed memory is not all given back to the system.
//!
//! Run: `WOKEN_BENCH_MAX_OPEN=0 cargo bench -p bridge-core --bench woken_portals`, and again without it.

mod support;

use bridge_api::{AccountContext, AccountId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::router::RouterConfig;
use bridge_testkit::loopback::LoopbackNetwork;
use std::time::{Duration, Instant};
use support::{DOMAIN, mls_router, pct};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// A field of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

fn main() {
    let portals = env_usize("WOKEN_BENCH_PORTALS", 2000);
    let max_open = env_usize("WOKEN_BENCH_MAX_OPEN", bridge_core::mls_rooms::DEFAULT_MAX_OPEN);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let (router, room, _) = mls_router(dir.path(), RouterConfig::new(DOMAIN)).await;
        room.set_max_open(Some(max_open).filter(|m| *m > 0));
        let id = AccountId::parse("lb.irc").expect("account");
        let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), DOMAIN));
        router.add_account(net.clone());
        let ids: Vec<PortalId> = (0..portals).map(|i| PortalId::new(format!("p{i}")).expect("portal id")).collect();
        let started = Instant::now();
        for p in &ids {
            router.create_portal(PortalRecord { id: p.clone(), mls_identity: MlsIdentity::Shared }).await.expect("p");
            router.link(net.leg(&format!("#{p}")), p).await.expect("link");
            room.register_portal(p).await.expect("registered");
        }
        let report = |what: &str, rate: Option<(f64, &[f64])>| {
            let rate = rate.map_or(String::new(), |(r, lat)| {
                format!(", {r:.0} lines/s, a line accepted in p50 {:.2} / p99 {:.2} ms", pct(lat, 0.5), pct(lat, 0.99))
            });
            println!(
                "woken_portals portals={portals} max_open={max_open} {what}: RSS {:.1} MiB, peak {:.1} MiB, {} open{rate}",
                status_mib("VmRSS"),
                status_mib("VmHWM"),
                room.open_count()
            );
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        report(&format!("after the start ({:.1} s)", started.elapsed().as_secs_f64()), None);
        for pass in 1..=2 {
            let t = Instant::now();
            let mut latency = Vec::with_capacity(portals);
            for p in &ids {
                let one = Instant::now();
                net.say(&format!("#{p}"), "bob", &format!("pass {pass} into {p}")).await.1.expect("bridged");
                latency.push(one.elapsed().as_secs_f64() * 1000.0);
            }
            let rate = portals as f64 / t.elapsed().as_secs_f64();
            latency.sort_by(f64::total_cmp);
            tokio::time::sleep(Duration::from_secs(3)).await;
            report(&format!("after a line into each, pass {pass}"), Some((rate, &latency)));
        }
        router.shutdown().await;
        room.shutdown().await;
    });
}
