//! Events per second through router + portal + durable store with loopback legs (no MLS yet: `LocalRoom`).
//!
//! Each iteration pushes `EVENTS` inbound messages from leg a, spread over `PORTALS` portals, pipelined through
//! `InboundSink::enqueue`, and stops the clock when every message is durably accepted *and* delivered to leg b.
//! Run: `cargo bench -p bridge-core --bench router`.

use bridge_api::event::{InboundKind, MessageDraft};
use bridge_api::{AccountContext, AccountId, InboundEvent, NativeId, PortalId};
use bridge_core::repo::{MlsIdentity, PortalRecord};
use bridge_core::room_of_record::LocalRoom;
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_testkit::loopback::LoopbackNetwork;
use criterion::{Criterion, criterion_group, criterion_main};
use mimi_store::{Backend, CommitConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTS: usize = 2_000;

async fn run_once(backend: Backend, portals: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bridge_core::open_store(dir.path(), Some(backend), CommitConfig::default()).expect("store");
    let router =
        RouterHandle::start(RouterConfig::new("bench.test"), store, Arc::new(LocalRoom)).await.expect("router");
    let mk = |n: &str| {
        let id = AccountId::parse(n).expect("id");
        let net = LoopbackNetwork::new(id.clone(), AccountContext::new(id, router.clone(), "bench.test"));
        router.add_account(net.clone());
        net
    };
    let (a, b) = (mk("lb.a"), mk("lb.b"));
    for p in 0..portals {
        let id = PortalId::new(format!("p{p}")).expect("portal");
        router.create_portal(PortalRecord { id: id.clone(), mls_identity: MlsIdentity::Shared }).await.expect("create");
        router.link(a.leg(&format!("#p{p}")), &id).await.expect("link a");
        router.link(b.leg(&format!("#p{p}")), &id).await.expect("link b");
    }
    let start = Instant::now();
    let mut acks = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let room = format!("#p{}", i % portals);
        let ev = InboundEvent {
            leg: a.leg(&room),
            sender: a.user("alice"),
            native_id: Some(NativeId(format!("n{i}"))),
            from_bridge: false,
            kind: InboundKind::Message { draft: MessageDraft::plain(format!("message number {i}")), reply_to: None },
        };
        acks.push(a.context().inbound.enqueue(ev).await.expect("queued"));
    }
    for ack in acks {
        ack.wait().await.expect("accepted");
    }
    let got = b.wait_delivered(EVENTS, Duration::from_secs(120)).await;
    let took = start.elapsed();
    assert_eq!(got.len(), EVENTS);
    router.shutdown().await;
    took
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut summary = Vec::new();
    let mut g = c.benchmark_group("router");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for backend in [Backend::Redb, Backend::Sled] {
        for portals in [1usize, 10] {
            let name = format!("{backend}/{portals}-portals/{EVENTS}-events");
            let mut best = Duration::MAX;
            g.bench_function(&name, |bn| {
                bn.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let d = rt.block_on(run_once(backend, portals));
                        best = best.min(d);
                        total += d;
                    }
                    total
                })
            });
            summary.push((name, EVENTS as f64 / best.as_secs_f64()));
        }
    }
    g.finish();
    println!("\nrouter throughput (best run; accepted durably and delivered to the other leg):");
    for (name, eps) in summary {
        println!("  {name:<40} {eps:>10.0} events/s");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
