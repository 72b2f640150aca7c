//! Hub sequencing + fan-out: application messages per second through a MIMI hub room with 1 000 client
//! subscriptions, and the latency until the *last* subscriber has each message.
//!
//! Setup (untimed): a redb store, a [`Provider`] hosting one room whose MLS group is a real OpenMLS group; its
//! member encrypts `HUB_BENCH_MESSAGES` (default 2 000) application messages of ~200 bytes of MIMI content.
//! `HUB_BENCH_SUBSCRIBERS` (default 1 000) subscriber tasks then do what a client long-poll does
//! (`/client/v1/messages?after=N&wait=S`): [`Provider::wait`] for the log to pass their cursor, then
//! [`Provider::entries_after`] from the store, page by page.
//!
//! Timed: `HUB_BENCH_SUBMITTERS` (default 1 and 16) concurrent submitters hand the messages to
//! [`Provider::submit`] (hub checks: group, epoch, participant; sequencing; the log entry durable before the
//! answer; subscribers woken). Reported: messages/s until every subscriber has every message; latency per message
//! from the start of its submit until the last subscriber has read it (p50, p99); and the submit answer time.
//!
//! Baseline, same run, same store, same concurrency: each message written as its own durable batch with
//! [`Store::commit`] and nothing else (no hub, no subscribers) — the floor the hub's durability costs. The ratio
//! printed is hub throughput / baseline throughput.
//!
//! Run: `cargo bench -p bridge-core --bench hub`.

use mimi_content::builder::ContentBuilder;
use mimi_mls::{EngineConfig, LocalMember, MlsBackend, PortalGroup};
use mimi_protocol::wire::MlsMessageBytes;
use mimi_provider::{JoinPolicy, Origin, Provider};
use mimi_store::{Backend, Batch, CommitConfig, Store, open_data_dir};
use openmls::prelude::SignatureScheme;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DOMAIN: &str = "hub.bench";
const ROOM: &str = "mimi://hub.bench/r/fanout";
const SENDER: &str = "mimi://hub.bench/u/alice";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Pre-encrypted application messages of one member of the room's group, all in the room's current epoch.
async fn messages(store: &Store, n: usize) -> (MlsMessageBytes, Vec<MlsMessageBytes>) {
    let mls = Arc::new(MlsBackend::new(store.clone(), "alice").expect("provider"));
    let me = LocalMember::load_or_create(&mls, SENDER, SignatureScheme::ED25519)
        .expect("member")
        .durable()
        .await
        .expect("durable");
    let mut group = PortalGroup::create(mls, Arc::new(me), &EngineConfig::default(), ROOM.as_bytes())
        .durable()
        .await
        .expect("group");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("message {i:05} {}", "lorem ipsum dolor sit amet ".repeat(6));
        let content = ContentBuilder::new(SENDER, ROOM).plain_text(&text).build_message().expect("content");
        let ct = group.encrypt(content.bytes()).durable().await.expect("encrypt");
        out.push(MlsMessageBytes::new(ct).expect("framed"));
    }
    (MlsMessageBytes::new(group.export_group_info(true).expect("group info")).expect("framed"), out)
}

struct Run {
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    submit_p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One timed run: a fresh room on a fresh store, `subscribers` long-polling tasks, `submitters` concurrent
/// submitters.
async fn hub_run(n: usize, subscribers: usize, submitters: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    let provider = Provider::open(DOMAIN, store.clone()).expect("provider");
    let (group_info, msgs) = messages(&store, n).await;
    provider.create_room(ROOM, &group_info, None, SENDER, JoinPolicy::Open, false).await.expect("room");

    // Per sequence number (1-based): how many subscribers have it, and when the last one got it (ns from t0).
    let got: Arc<Vec<AtomicUsize>> = Arc::new((0..=n).map(|_| AtomicUsize::new(0)).collect());
    let done_at: Arc<Vec<AtomicU64>> = Arc::new((0..=n).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (p, got, done_at) = (provider.clone(), got.clone(), done_at.clone());
        subs.push(tokio::spawn(async move {
            let mut cursor = 0u64;
            while cursor < n as u64 {
                p.wait(ROOM, cursor, Duration::from_secs(30)).await.expect("wait");
                for e in p.entries_after(ROOM, cursor, 256).expect("entries") {
                    cursor = e.seq;
                    let i = e.seq as usize;
                    if got[i].fetch_add(1, Ordering::AcqRel) + 1 == subscribers {
                        done_at[i].store(t0.elapsed().as_nanos() as u64, Ordering::Release);
                    }
                }
            }
        }));
    }
    // Let every subscriber park in its wait before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let queue = Arc::new(std::sync::Mutex::new(msgs.into_iter().collect::<std::collections::VecDeque<_>>()));
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..=n).map(|_| AtomicU64::new(0)).collect());
    let answer_ms = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..submitters {
        let (p, queue, started, answer_ms) = (provider.clone(), queue.clone(), started.clone(), answer_ms.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(m) = queue.lock().expect("queue").pop_front() else { return };
                let s = t0.elapsed().as_nanos() as u64;
                let a = p.submit(ROOM, m, SENDER, Origin::Client(SENDER.into())).await.expect("accepted");
                let took = (t0.elapsed().as_nanos() as u64 - s) as f64 / 1e6;
                started[a.seq as usize].store(s, Ordering::Release);
                answer_ms.lock().expect("answers").push(took);
            }
        }));
    }
    for w in workers {
        w.await.expect("submitter");
    }
    for s in subs {
        s.await.expect("subscriber");
    }
    let elapsed = start.elapsed();
    // Without subscribers there is no fan-out latency (NaN is printed).
    let mut lat: Vec<f64> = (1..=n)
        .filter(|_| subscribers > 0)
        .map(|i| {
            let (s, d) = (started[i].load(Ordering::Acquire), done_at[i].load(Ordering::Acquire));
            d.saturating_sub(s) as f64 / 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let mut answers = answer_ms.lock().expect("answers").clone();
    answers.sort_by(f64::total_cmp);
    Run {
        msgs_per_s: n as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        submit_p99_ms: percentile(&answers, 0.99),
    }
}

/// The baseline: the same number of ~message-sized durable batches through group commit, same concurrency.
async fn baseline_run(n: usize, submitters: usize, size: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..submitters {
        let (store, next) = (store.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                if i >= n {
                    return;
                }
                let mut b = Batch::new();
                b.put("hub_log", (i as u64).to_be_bytes().to_vec(), vec![0x5a; size]);
                store.commit(b).await.expect("commit");
            }
        }));
    }
    for w in workers {
        w.await.expect("writer");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (every figure is printed).
    let n = env_usize("HUB_BENCH_MESSAGES", 2_000);
    let subscribers = env_usize("HUB_BENCH_SUBSCRIBERS", 1_000);
    let concurrency = env_list("HUB_BENCH_SUBMITTERS", &[1, 16]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("hub sequencing + fan-out: {n} messages, {subscribers} subscribers (redb, fsync per group commit)");
    println!(
        "{:>10} {:>12} {:>10} {:>10} {:>14} {:>14} {:>7}",
        "submitters", "hub msg/s", "p50 ms", "p99 ms", "submit p99 ms", "baseline/s", "ratio"
    );
    for c in concurrency {
        let hub = rt.block_on(hub_run(n, subscribers, c));
        let base = rt.block_on(baseline_run(n, c, 300));
        println!(
            "{:>10} {:>12.0} {:>10.2} {:>10.2} {:>14.2} {:>14.0} {:>7.2}",
            c,
            hub.msgs_per_s,
            hub.p50_ms,
            hub.p99_ms,
            hub.submit_p99_ms,
            base,
            hub.msgs_per_s / base
        );
    }
}
