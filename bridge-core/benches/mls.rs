//! The MLS engine (OpenMLS on the bridge's store) beside raw OpenMLS with its in-memory storage, same run.
//!
//! Per group size N (default 2, 100, 1000; `MLS_BENCH_SIZES=2,100,1000,10000` to change):
//! * `add_commit` — the committer creates a commit adding one member (then clears it, untimed);
//! * `process_add` — another member processes and merges such a commit;
//! * `welcome_join` — a new member joins from the Welcome of such a commit;
//! * `encrypt` / `decrypt` — one application message.
//!
//! The engine is timed twice: `engine` = the operation including handing its batch to group commit (the CPU
//! cost), `engine+durable` = until that batch is on disk (redb, fsync). Raw OpenMLS has no durability. At the end
//! the ratios engine/raw are printed, and the MLS state held in memory per group.
//!
//! Run: `cargo bench -p bridge-core --bench mls`.

use bridge_core::mls::{BridgeProvider, Durability, EngineConfig, LocalMember, PortalGroup, Received, key_packages};
use bridge_core::store::{Backend, CommitConfig, Store, open_data_dir};
use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Members are seated in commits of this many adds (one huge commit is super-linear, crates.md).
const SEAT_BATCH: usize = 200;

/// Counter naming the engine's joiners (one namespace each).
static JOINERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Mean time per iteration recorded by each benchmark, for the ratio table.
static MEANS: Mutex<BTreeMap<(usize, &'static str, &'static str), f64>> = Mutex::new(BTreeMap::new());

fn record(n: usize, op: &'static str, side: &'static str, total: Duration, iters: u64) {
    let mean = total.as_secs_f64() / iters.max(1) as f64;
    let mut m = MEANS.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry((n, op, side)).or_insert(mean);
    *e = e.min(mean);
}

// ---------- raw OpenMLS, in-memory storage ----------

struct Raw {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cred: CredentialWithKey,
}

fn raw_member(name: &str) -> Raw {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("key");
    signer.store(provider.storage()).expect("store key");
    let cred = CredentialWithKey {
        credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    Raw { provider, signer, cred }
}

/// A KeyPackage as published bytes (MLSMessage).
fn raw_kp(m: &Raw) -> Vec<u8> {
    let b = KeyPackage::builder().build(CS, &m.provider, &m.signer, m.cred.clone()).expect("kp");
    MlsMessageOut::from(b.key_package().clone()).to_bytes().expect("bytes")
}

/// A KeyPackage of a new member (own signature key: a group refuses duplicate keys).
fn fresh_kp() -> Vec<u8> {
    let k = JOINERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    raw_kp(&raw_member(&format!("member{k}")))
}

/// Parses and validates a published KeyPackage, as an application must before adding it.
fn raw_parse_kp(p: &OpenMlsRustCrypto, bytes: &[u8]) -> KeyPackage {
    let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize(&mut &bytes[..]).expect("parse").extract()
    else {
        panic!("not a key package")
    };
    kp.validate(p.crypto(), ProtocolVersion::Mls10).expect("valid")
}

fn raw_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(2)
        .use_ratchet_tree_extension(true)
        .build()
}

fn raw_process(g: &mut MlsGroup, p: &OpenMlsRustCrypto, msg: &[u8]) -> Vec<u8> {
    let m = MlsMessageIn::tls_deserialize(&mut &msg[..]).expect("parse");
    let pm = m.try_into_protocol_message().expect("protocol message");
    match g.process_message(p, pm).expect("process").into_content() {
        ProcessedMessageContent::ApplicationMessage(a) => a.into_bytes(),
        ProcessedMessageContent::StagedCommitMessage(s) => {
            g.merge_staged_commit(p, *s).expect("merge");
            Vec::new()
        }
        _ => panic!("unexpected content"),
    }
}

/// Committer (alice) and one other member (bob), in a group of `n` members; the others are KeyPackages only.
fn raw_group(n: usize) -> (Raw, MlsGroup, Raw, MlsGroup) {
    let alice = raw_member("alice");
    let bob = raw_member("bob");
    let mut ga = MlsGroup::new(&alice.provider, &alice.signer, &raw_config(), alice.cred.clone()).expect("group");
    let (_, welcome, _) = ga
        .add_members(&alice.provider, &alice.signer, &[raw_parse_kp(&alice.provider, &raw_kp(&bob))])
        .expect("add bob");
    ga.merge_pending_commit(&alice.provider).expect("merge");
    let welcome = match MlsMessageIn::from(welcome).extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => panic!("welcome"),
    };
    let join = MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(2)
        .use_ratchet_tree_extension(true)
        .build();
    let mut gb = StagedWelcome::new_from_welcome(&bob.provider, &join, welcome, None)
        .expect("staged")
        .into_group(&bob.provider)
        .expect("join");
    let mut left = n.saturating_sub(2);
    while left > 0 {
        let k = left.min(SEAT_BATCH);
        let kps: Vec<KeyPackage> = (0..k).map(|_| raw_parse_kp(&alice.provider, &fresh_kp())).collect();
        let (commit, _, _) = ga.add_members(&alice.provider, &alice.signer, &kps).expect("seat");
        ga.merge_pending_commit(&alice.provider).expect("merge");
        raw_process(&mut gb, &bob.provider, &commit.to_bytes().expect("bytes"));
        left -= k;
    }
    (alice, ga, bob, gb)
}

fn raw_state_bytes(p: &OpenMlsRustCrypto) -> usize {
    let v = p.storage().values.read().unwrap_or_else(|e| e.into_inner());
    v.iter().map(|(k, v)| k.len() + v.len()).sum()
}

// ---------- the engine ----------

struct Eng {
    _dir: tempfile::TempDir,
    store: Store,
    alice: Arc<BridgeProvider>,
    alice_m: Arc<LocalMember>,
    bob_m: Arc<LocalMember>,
    bob: Arc<BridgeProvider>,
}

fn eng_member(store: &Store, name: &str) -> (Arc<BridgeProvider>, Arc<LocalMember>) {
    let p = Arc::new(BridgeProvider::new(store.clone(), name).expect("provider"));
    let m = LocalMember::load_or_create(&p, &format!("mimi://bench.test/u/{name}"), SignatureScheme::ED25519)
        .expect("member")
        .durable_blocking()
        .expect("durable");
    (p, Arc::new(m))
}

fn eng_kp(p: &BridgeProvider, m: &LocalMember) -> Vec<u8> {
    key_packages::generate(p, m, &EngineConfig::default(), 1, false).durable_blocking().expect("kp").pop().expect("one")
}

fn eng_group(n: usize) -> (Eng, PortalGroup, PortalGroup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default()).expect("store");
    let (alice, alice_m) = eng_member(&store, "alice");
    let (bob, bob_m) = eng_member(&store, "bob");
    let cfg = EngineConfig::default();
    let mut ga =
        PortalGroup::create(alice.clone(), alice_m.clone(), &cfg, b"bench").durable_blocking().expect("create");
    let out = ga.add_members(&[&eng_kp(&bob, &bob_m)]).durable_blocking().expect("add bob");
    ga.merge_pending_commit().durable_blocking().expect("merge");
    let mut gb = PortalGroup::join_from_welcome(bob.clone(), bob_m.clone(), &cfg, &out.welcome.expect("w"), None)
        .durable_blocking()
        .expect("join");
    let mut left = n.saturating_sub(2);
    while left > 0 {
        let k = left.min(SEAT_BATCH);
        let kps: Vec<Vec<u8>> = (0..k).map(|_| fresh_kp()).collect();
        let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
        let out = ga.add_members(&refs).durable_blocking().expect("seat");
        ga.merge_pending_commit().durable_blocking().expect("merge");
        gb.process(&out.commit).durable_blocking().expect("process seat");
        left -= k;
    }
    (Eng { _dir: dir, store, alice, alice_m, bob_m, bob }, ga, gb)
}

/// Times `op` (returns the durability handle of the engine op); `durable` includes the wait in the time.
fn time_engine(durable: bool, op: impl FnOnce() -> Durability) -> Duration {
    let t = Instant::now();
    let d = op();
    let cpu = t.elapsed();
    d.wait_blocking().expect("durable");
    if durable { t.elapsed() } else { cpu }
}

fn bench_size(g: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    // ----- raw -----
    let (alice, mut ga, bob, mut gb) = raw_group(n);
    g.bench_function(format!("add_commit/raw/{n}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let kp = fresh_kp();
                let t = Instant::now();
                let kp = raw_parse_kp(&alice.provider, &kp);
                let out = ga.add_members(&alice.provider, &alice.signer, &[kp]).expect("add");
                total += t.elapsed();
                drop(out);
                ga.clear_pending_commit(alice.provider.storage()).expect("clear");
            }
            record(n, "add_commit", "raw", total, iters);
            total
        })
    });
    g.bench_function(format!("process_add/raw/{n}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let kp = raw_parse_kp(&alice.provider, &fresh_kp());
                let (commit, _, _) = ga.add_members(&alice.provider, &alice.signer, &[kp]).expect("add");
                let bytes = commit.to_bytes().expect("bytes");
                let t = Instant::now();
                raw_process(&mut gb, &bob.provider, &bytes);
                total += t.elapsed();
                ga.merge_pending_commit(&alice.provider).expect("merge");
                // Keep the group at N: remove the member again (untimed).
                let last = ga.members().last().expect("member").index;
                let (commit, _, _) = ga.remove_members(&alice.provider, &alice.signer, &[last]).expect("remove");
                raw_process(&mut gb, &bob.provider, &commit.to_bytes().expect("bytes"));
                ga.merge_pending_commit(&alice.provider).expect("merge");
            }
            record(n, "process_add", "raw", total, iters);
            total
        })
    });
    g.bench_function(format!("welcome_join/raw/{n}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let j = raw_member("joiner");
                let kp = raw_parse_kp(&alice.provider, &raw_kp(&j));
                let (_, welcome, _) = ga.add_members(&alice.provider, &alice.signer, &[kp]).expect("add");
                let bytes = welcome.to_bytes().expect("bytes");
                let t = Instant::now();
                let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize(&mut &bytes[..]).expect("p").extract()
                else {
                    panic!("welcome")
                };
                let join = MlsGroupJoinConfig::builder().use_ratchet_tree_extension(true).build();
                let g = StagedWelcome::new_from_welcome(&j.provider, &join, w, None)
                    .expect("staged")
                    .into_group(&j.provider)
                    .expect("join");
                total += t.elapsed();
                drop(g);
                ga.clear_pending_commit(alice.provider.storage()).expect("clear");
            }
            record(n, "welcome_join", "raw", total, iters);
            total
        })
    });
    let mut last = Vec::new();
    g.bench_function(format!("encrypt/raw/{n}"), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                last = ga.create_message(&alice.provider, &alice.signer, b"hello").expect("enc").to_bytes().expect("b");
            }
            let total = t.elapsed();
            record(n, "encrypt", "raw", total, iters);
            total
        })
    });
    let bundle = ga.self_update(&alice.provider, &alice.signer, LeafNodeParameters::default()).expect("update");
    raw_process(&mut gb, &bob.provider, &bundle.into_commit().to_bytes().expect("bytes"));
    ga.merge_pending_commit(&alice.provider).expect("merge");
    g.bench_function(format!("decrypt/raw/{n}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ct =
                    ga.create_message(&alice.provider, &alice.signer, b"hello").expect("enc").to_bytes().expect("b");
                let t = Instant::now();
                raw_process(&mut gb, &bob.provider, &ct);
                total += t.elapsed();
            }
            record(n, "decrypt", "raw", total, iters);
            total
        })
    });
    let raw_mem = raw_state_bytes(&bob.provider);
    drop((ga, gb));

    // ----- engine -----
    let (eng, mut ea, mut eb) = eng_group(n);
    for (side, durable) in [("engine", false), ("engine+durable", true)] {
        g.bench_function(format!("add_commit/{side}/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let kp = fresh_kp();
                    total += time_engine(durable, || {
                        let (r, d) = ea.add_members(&[&kp]).into_parts();
                        r.expect("add");
                        d
                    });
                    ea.clear_pending_commit().durable_blocking().expect("clear");
                }
                record(n, "add_commit", side, total, iters);
                total
            })
        });
        g.bench_function(format!("process_add/{side}/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let kp = fresh_kp();
                    let out = ea.add_members(&[&kp]).durable_blocking().expect("add");
                    total += time_engine(durable, || {
                        let (r, d) = eb.process(&out.commit).into_parts();
                        assert!(matches!(r, Ok(Received::Commit { .. })));
                        d
                    });
                    ea.merge_pending_commit().durable_blocking().expect("merge");
                    // Keep the group at N: remove the member again (untimed).
                    let last = ea.members().last().expect("member").index;
                    let out = ea.remove_members(&[last]).durable_blocking().expect("remove");
                    eb.process(&out.commit).durable_blocking().expect("process remove");
                    ea.merge_pending_commit().durable_blocking().expect("merge");
                }
                record(n, "process_add", side, total, iters);
                total
            })
        });
        g.bench_function(format!("welcome_join/{side}/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let k = JOINERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (p, m) = eng_member(&eng.store, &format!("joiner{k}"));
                    let kp = eng_kp(&p, &m);
                    let out = ea.add_members(&[&kp]).durable_blocking().expect("add");
                    let w = out.welcome.expect("welcome");
                    total += time_engine(durable, || {
                        let (r, d) =
                            PortalGroup::join_from_welcome(p.clone(), m.clone(), &EngineConfig::default(), &w, None)
                                .into_parts();
                        r.expect("join");
                        d
                    });
                    ea.clear_pending_commit().durable_blocking().expect("clear");
                }
                record(n, "welcome_join", side, total, iters);
                total
            })
        });
        g.bench_function(format!("encrypt/{side}/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += time_engine(durable, || {
                        let (r, d) = ea.encrypt(b"hello").into_parts();
                        r.expect("enc");
                        d
                    });
                }
                record(n, "encrypt", side, total, iters);
                total
            })
        });
        let out = ea.self_update().durable_blocking().expect("update");
        eb.process(&out.commit).durable_blocking().expect("process update");
        ea.merge_pending_commit().durable_blocking().expect("merge");
        g.bench_function(format!("decrypt/{side}/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ct = ea.encrypt(b"hello").durable_blocking().expect("enc");
                    total += time_engine(durable, || {
                        let (r, d) = eb.process(&ct).into_parts();
                        assert!(matches!(r, Ok(Received::Application { .. })));
                        d
                    });
                }
                record(n, "decrypt", side, total, iters);
                total
            })
        });
    }
    let eng_mem = eb.cached_state_bytes();
    println!(
        "state held by the non-committing member at N={n}: raw OpenMLS (JSON) {raw_mem} B, engine (CBOR) {eng_mem} B"
    );
    let _ = (&eng.alice, &eng.alice_m, &eng.bob, &eng.bob_m);
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MLS_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 100, 1000]);
    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("mls");
        g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for &n in &sizes {
            bench_size(&mut g, n);
        }
        g.finish();
    }
    c.final_summary();

    println!("\nratios vs raw OpenMLS (best mean per iteration across samples)");
    println!(
        "{:>6} {:>13} {:>12} {:>12} {:>8} {:>16} {:>8}",
        "N", "op", "raw", "engine", "ratio", "engine+durable", "ratio"
    );
    let m = MEANS.lock().unwrap_or_else(|p| p.into_inner());
    for &n in &sizes {
        for op in ["add_commit", "process_add", "welcome_join", "encrypt", "decrypt"] {
            let (Some(raw), Some(e), Some(ed)) =
                (m.get(&(n, op, "raw")), m.get(&(n, op, "engine")), m.get(&(n, op, "engine+durable")))
            else {
                continue;
            };
            println!(
                "{n:>6} {op:>13} {:>10.1}µs {:>10.1}µs {:>7.2}× {:>14.1}µs {:>7.2}×",
                raw * 1e6,
                e * 1e6,
                e / raw,
                ed * 1e6,
                ed / raw
            );
        }
    }
}
