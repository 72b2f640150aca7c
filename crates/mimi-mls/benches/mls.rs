//! The MLS engine (OpenMLS on the bridge's store) beside raw OpenMLS with its in-memory storage, same run.
//!
//! Per group size N (default 2, 100, 1000; `MLS_BENCH_SIZES=2,100,1000,10000` to change):
//! * `add_commit` — the committer creates a commit adding one member (then clears it, untimed);
//! * `process_add` — another member processes and merges such a commit;
//! * `welcome_join` — a new member joins from the Welcome of such a commit;
//! * `encrypt` / `decrypt` — one application message.
//!
//! The engine is timed twice: `engine` = the operation's CPU cost (its state sealed for group commit; encrypt and
//! decrypt run back to back with the durability waits pipelined — one untimed wait per sample — as a busy portal
//! runs them, and as raw OpenMLS runs them), `engine+durable` = each operation until its state is on disk (redb,
//! fsync), the hand-off to the committer included. Raw OpenMLS has no durability. At the end
//! the ratios engine/raw are printed, and the MLS state held in memory per group.
//!
//! Per-user leaves (`MLS_BENCH_LEAVES`, default 1, 10, 100): `leaves_process` — a native member's commit processed
//! by the bridge's leaf and K per-user leaves (N = K in the table).
//!
//! Then, unless `MLS_BENCH_THROUGHPUT=0`: application messages per second across 8 concurrent portals, raw
//! OpenMLS beside the engine releasing each ciphertext once durable (group commit), with the durability wait
//! (`MLS_BENCH_TP_MESSAGES` per portal, default 2000).
//!
//! `MLS_PROFILE=encrypt|decrypt:N:iters` runs a profiling loop instead (see `profile`).
//!
//! mls-rs (in-memory state, no storage calls) is timed beside them for `encrypt` and `decrypt`. How long seating
//! each group took (KeyPackages made, commits of 200 adds created and processed) is printed too.
//! `MLS_BENCH_WRITE_BEHIND=0` runs the engine with its message secrets written through on every message.
//!
//! Run: `cargo bench -p mimi-mls --bench mls`.

use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use mimi_mls::{
    AddLeaf, Durability, EngineConfig, LeafPolicy, LocalMember, MlsBackend, PortalGroup, Received, UserLeaves,
    key_packages, verified_signatures,
};
use mimi_store::{Backend, Batch, CommitConfig, Entries, KvStore, Store, StoreError, open_data_dir};
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

/// Time and iterations recorded by each benchmark over all its samples (warm-up included), for the ratio table:
/// the mean over everything run, so that costs paid every so many operations (the engine's periodic encoding of
/// the message secrets) count in full, as they do in criterion's own estimate.
static MEANS: Mutex<Recorded> = Mutex::new(BTreeMap::new());

/// (N, operation, side) → (total time, iterations).
type Recorded = BTreeMap<(usize, &'static str, &'static str), (Duration, u64)>;

fn record(n: usize, op: &'static str, side: &'static str, total: Duration, iters: u64) {
    let mut m = MEANS.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry((n, op, side)).or_insert((Duration::ZERO, 0));
    e.0 += total;
    e.1 += iters;
}

/// The mean time per iteration recorded for `(n, op, side)`, in seconds.
fn mean(
    m: &BTreeMap<(usize, &'static str, &'static str), (Duration, u64)>,
    key: (usize, &'static str, &'static str),
) -> Option<f64> {
    m.get(&key).filter(|(_, iters)| *iters > 0).map(|(t, iters)| t.as_secs_f64() / *iters as f64)
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
    alice: Arc<MlsBackend>,
    alice_m: Arc<LocalMember>,
    bob_m: Arc<LocalMember>,
    bob: Arc<MlsBackend>,
}

fn eng_member(store: &Store, name: &str) -> (Arc<MlsBackend>, Arc<LocalMember>) {
    let p = Arc::new(MlsBackend::new(store.clone(), name).expect("provider"));
    // `MLS_BENCH_WRITE_BEHIND=0`: message secrets written through on every message (the engine before
    // write-behind), to compare.
    if let Some(ops) = std::env::var("MLS_BENCH_WRITE_BEHIND").ok().and_then(|v| v.parse().ok()) {
        p.set_write_behind_ops(ops);
    }
    let m = LocalMember::load_or_create(&p, &format!("mimi://bench.test/u/{name}"), SignatureScheme::ED25519)
        .expect("member")
        .durable_blocking()
        .expect("durable");
    (p, Arc::new(m))
}

fn eng_kp(p: &MlsBackend, m: &LocalMember) -> Vec<u8> {
    key_packages::generate(p, m, &EngineConfig::default(), 1, false).durable_blocking().expect("kp").pop().expect("one")
}

/// A backend that keeps nothing (profile mode, `MLS_PROFILE_STORE=null`): isolates the engine's CPU from the
/// committer's writes and fsyncs.
struct NullKv;

impl KvStore for NullKv {
    fn backend(&self) -> &'static str {
        "null"
    }
    fn get(&self, _: &str, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn scan_prefix(&self, _: &str, _: &[u8]) -> Result<Entries, StoreError> {
        Ok(Vec::new())
    }
    fn write(&self, _: &[Batch]) -> Result<(), StoreError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn trees(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

fn eng_group(n: usize) -> (Eng, PortalGroup, PortalGroup) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = if std::env::var("MLS_PROFILE_STORE").as_deref() == Ok("null") {
        Store::new(Arc::new(NullKv), CommitConfig::default())
    } else {
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store")
    };
    let (alice, alice_m) = eng_member(&store, "alice");
    let (bob, bob_m) = eng_member(&store, "bob");
    let cfg = EngineConfig::default();
    let mut ga =
        PortalGroup::create(alice.clone(), alice_m.clone(), &cfg, b"bench").durable_blocking().expect("create");
    let out = ga.add_members(&[&eng_kp(&bob, &bob_m)]).durable_blocking().expect("add bob");
    ga.merge_pending_commit().durable_blocking().expect("merge");
    let tree = ga.export_ratchet_tree().expect("tree");
    let mut gb =
        PortalGroup::join_from_welcome(bob.clone(), bob_m.clone(), &cfg, &out.welcome.expect("w"), Some(&tree))
            .durable_blocking()
            .expect("join");
    let mut left = n.saturating_sub(2);
    while left > 0 {
        let k = left.min(SEAT_BATCH);
        let kps: Vec<Vec<u8>> = (0..k).map(|_| fresh_kp()).collect();
        let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
        let out = ga.add_members(&refs).durable_blocking().expect("seat");
        ga.merge_pending_commit().durable_blocking().expect("merge");
        // Alice and bob stand for members on two machines: bob does not find what alice verified.
        verified_signatures::forget();
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

/// Prints how long seating a group of `n` took (the committer adding the members in commits of `SEAT_BATCH`, the
/// second member processing each commit).
fn seated(side: &str, n: usize, since: Instant) {
    println!("seating N={n} ({side}): {:.2} s", since.elapsed().as_secs_f64());
}

fn bench_size(g: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    // ----- raw -----
    let t = Instant::now();
    let (alice, mut ga, bob, mut gb) = raw_group(n);
    seated("raw OpenMLS", n, t);
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
            let cts: Vec<Vec<u8>> = (0..iters)
                .map(|_| {
                    ga.create_message(&alice.provider, &alice.signer, b"hello").expect("enc").to_bytes().expect("b")
                })
                .collect();
            let t = Instant::now();
            for ct in &cts {
                raw_process(&mut gb, &bob.provider, ct);
            }
            let total = t.elapsed();
            record(n, "decrypt", "raw", total, iters);
            total
        })
    });
    let raw_mem = raw_state_bytes(&bob.provider);
    drop((ga, gb));

    // ----- engine -----
    let t = Instant::now();
    let (eng, mut ea, mut eb) = eng_group(n);
    seated("engine", n, t);
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
                    verified_signatures::forget();
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
                    // Welcomes carry no tree: the joiner gets the committer's (untimed: the hub serves it).
                    ea.merge_pending_commit().durable_blocking().expect("merge");
                    eb.process(&out.commit).durable_blocking().expect("process add");
                    let tree = ea.export_ratchet_tree().expect("tree");
                    // A joiner elsewhere has verified none of the tree's leaves.
                    verified_signatures::forget();
                    total += time_engine(durable, || {
                        let cfg = EngineConfig::default();
                        let (r, d) =
                            PortalGroup::join_from_welcome(p.clone(), m.clone(), &cfg, &w, Some(&tree)).into_parts();
                        r.expect("join");
                        d
                    });
                    // Keep the group at N: remove the joiner again (untimed).
                    let last = ea.members().last().expect("member").index;
                    let out = ea.remove_members(&[last]).durable_blocking().expect("remove");
                    eb.process(&out.commit).durable_blocking().expect("process remove");
                    ea.merge_pending_commit().durable_blocking().expect("merge");
                }
                record(n, "welcome_join", side, total, iters);
                total
            })
        });
        g.bench_function(format!("encrypt/{side}/{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                if durable {
                    for _ in 0..iters {
                        total += time_engine(true, || {
                            let (r, d) = ea.encrypt(b"hello").into_parts();
                            r.expect("enc");
                            d
                        });
                    }
                } else {
                    // Pipelined: the waits overlap the next operations (one untimed wait at the end).
                    let t = Instant::now();
                    let mut last = Durability::ready();
                    for _ in 0..iters {
                        let (r, d) = ea.encrypt(b"hello").into_parts();
                        r.expect("enc");
                        last = d;
                    }
                    total = t.elapsed();
                    last.wait_blocking().expect("durable");
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
                let mut cts = Vec::with_capacity(iters as usize);
                let mut last = Durability::ready();
                for _ in 0..iters {
                    let (r, d) = ea.encrypt(b"hello").into_parts();
                    cts.push(r.expect("enc"));
                    last = d;
                }
                last.wait_blocking().expect("durable");
                let mut total = Duration::ZERO;
                if durable {
                    for ct in &cts {
                        total += time_engine(true, || {
                            let (r, d) = eb.process(ct).into_parts();
                            assert!(matches!(r, Ok(Received::Application { .. })));
                            d
                        });
                    }
                } else {
                    let t = Instant::now();
                    let mut last = Durability::ready();
                    for ct in &cts {
                        let (r, d) = eb.process(ct).into_parts();
                        assert!(matches!(r, Ok(Received::Application { .. })));
                        last = d;
                    }
                    total = t.elapsed();
                    last.wait_blocking().expect("durable");
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

// ---------- mls-rs, in-memory state ----------

fn rs_client(name: &str) -> mls_rs::Client<impl mls_rs::client_builder::MlsConfig> {
    use mls_rs::{CipherSuiteProvider as _, CryptoProvider as _};
    let crypto = mls_rs_crypto_rustcrypto::RustCryptoProvider::default();
    let suite = crypto.cipher_suite_provider(mls_rs::CipherSuite::CURVE25519_AES128).expect("suite 0x0001");
    let (secret, public) = suite.signature_key_generate().expect("signature key");
    let credential = mls_rs::identity::basic::BasicCredential::new(name.as_bytes().to_vec()).into_credential();
    mls_rs::Client::builder()
        .identity_provider(mls_rs::identity::basic::BasicIdentityProvider)
        .crypto_provider(crypto)
        .signing_identity(
            mls_rs::identity::SigningIdentity::new(credential, public),
            secret,
            mls_rs::CipherSuite::CURVE25519_AES128,
        )
        .build()
}

fn rs_kp(name: &str) -> mls_rs::MlsMessage {
    rs_client(name).generate_key_package_message(Default::default(), Default::default(), None).expect("kp")
}

/// `encrypt/mls-rs/N`, `decrypt/mls-rs/N`: an mls-rs group of `n` members, seated like the others (commits of
/// `SEAT_BATCH` adds); alice encrypts, bob decrypts.
fn bench_mls_rs(g: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    let t = Instant::now();
    let alice = rs_client("alice");
    let bob = rs_client("bob");
    let mut ga = alice.create_group(Default::default(), Default::default(), None).expect("create");
    let bob_kp = bob.generate_key_package_message(Default::default(), Default::default(), None).expect("kp");
    let out = ga.commit_builder().add_member(bob_kp).expect("add").build().expect("commit");
    ga.apply_pending_commit().expect("apply");
    let (mut gb, _) = bob.join_group(None, &out.welcome_messages[0], None).expect("join");
    let mut left = n.saturating_sub(2);
    while left > 0 {
        let k = left.min(SEAT_BATCH);
        let mut builder = ga.commit_builder();
        for i in 0..k {
            builder = builder.add_member(rs_kp(&format!("m{left}.{i}"))).expect("add");
        }
        let out = builder.build().expect("seat");
        ga.apply_pending_commit().expect("apply");
        gb.process_incoming_message(out.commit_message).expect("process seat");
        left -= k;
    }
    seated("mls-rs", n, t);
    g.bench_function(format!("encrypt/mls-rs/{n}"), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(ga.encrypt_application_message(b"hello", Vec::new()).expect("enc"));
            }
            let total = t.elapsed();
            record(n, "encrypt", "mls-rs", total, iters);
            total
        })
    });
    // A fresh epoch: bob never saw the generations alice used above (beyond mls-rs's forward distance).
    let out = ga.commit(Vec::new()).expect("commit");
    ga.apply_pending_commit().expect("apply");
    gb.process_incoming_message(out.commit_message).expect("process commit");
    g.bench_function(format!("decrypt/mls-rs/{n}"), |b| {
        b.iter_custom(|iters| {
            let cts: Vec<mls_rs::MlsMessage> =
                (0..iters).map(|_| ga.encrypt_application_message(b"hello", Vec::new()).expect("enc")).collect();
            let t = Instant::now();
            for ct in cts {
                std::hint::black_box(gb.process_incoming_message(ct).expect("dec"));
            }
            let total = t.elapsed();
            record(n, "decrypt", "mls-rs", total, iters);
            total
        })
    });
}

// ---------- profile mode ----------

/// CPU time of the calling thread (`/proc/thread-self/schedstat`, ns): unlike wall time, not inflated when other
/// processes share the cores. Includes the thread's time in the kernel (e.g. waking the committer).
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(s.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0))
}

/// `MLS_PROFILE=op:N:iters` (op = encrypt | decrypt): runs the operation on raw OpenMLS and on the engine in
/// alternating rounds, in functions of their own, and prints the best per-operation thread CPU time of each — for
/// quick comparisons, and for `valgrind --tool=callgrind` (compare the inclusive cost of `prof_raw` and
/// `prof_engine`). `MLS_PROFILE_STORE=null` puts the engine on a backend that keeps nothing.
fn profile(spec: &str) {
    let mut parts = spec.split(':');
    let op = parts.next().unwrap_or("encrypt").to_owned();
    let n: usize = parts.next().and_then(|x| x.parse().ok()).unwrap_or(2);
    let iters: usize = parts.next().and_then(|x| x.parse().ok()).unwrap_or(1000);
    const ROUNDS: usize = 5;
    let per = iters.div_ceil(ROUNDS);
    let (alice, mut ga, bob, mut gb) = raw_group(n);
    let (_eng, mut ea, mut eb) = eng_group(n);
    let (mut raw_best, mut eng_best) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let cts: Vec<Vec<u8>> = if op == "decrypt" {
            (0..per)
                .map(|_| {
                    ga.create_message(&alice.provider, &alice.signer, b"hello").expect("enc").to_bytes().expect("b")
                })
                .collect()
        } else {
            Vec::new()
        };
        let t = thread_cpu();
        prof_raw(&op, per, &alice, &mut ga, &bob, &mut gb, &cts);
        raw_best = raw_best.min(thread_cpu() - t);
        let cts: Vec<Vec<u8>> = if op == "decrypt" {
            (0..per).map(|_| ea.encrypt(b"hello").durable_blocking().expect("enc")).collect()
        } else {
            Vec::new()
        };
        let t = thread_cpu();
        let last = prof_engine(&op, per, &mut ea, &mut eb, &cts);
        eng_best = eng_best.min(thread_cpu() - t);
        last.wait_blocking().expect("durable");
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / per as f64;
    println!(
        "{op} N={n} ({ROUNDS}×{per}, best round, thread CPU): raw {:.1} µs/op, engine {:.1} µs/op ({:.2}×)",
        us(raw_best),
        us(eng_best),
        eng_best.as_secs_f64() / raw_best.as_secs_f64()
    );
}

#[inline(never)]
fn prof_raw(op: &str, iters: usize, alice: &Raw, ga: &mut MlsGroup, bob: &Raw, gb: &mut MlsGroup, cts: &[Vec<u8>]) {
    if op == "decrypt" {
        for ct in cts {
            raw_process(gb, &bob.provider, ct);
        }
    } else {
        for _ in 0..iters {
            let ct = ga.create_message(&alice.provider, &alice.signer, b"hello").expect("enc").to_bytes().expect("b");
            std::hint::black_box(ct);
        }
    }
}

/// Returns the durability of the last operation (the engine's pipeline: the caller waits once at the end).
#[inline(never)]
fn prof_engine(op: &str, iters: usize, ea: &mut PortalGroup, eb: &mut PortalGroup, cts: &[Vec<u8>]) -> Durability {
    let mut last = Durability::ready();
    if op == "decrypt" {
        for ct in cts {
            let (r, d) = eb.process(ct).into_parts();
            assert!(matches!(r, Ok(Received::Application { .. })));
            last = d;
        }
    } else {
        for _ in 0..iters {
            let (r, d) = ea.encrypt(b"hello").into_parts();
            std::hint::black_box(r.expect("enc"));
            last = d;
        }
    }
    last
}

// ---------- per-user leaves: commit processing with K local leaves ----------

/// A raw OpenMLS member joins from a Welcome (bytes).
fn raw_join(m: &Raw, welcome: &[u8]) -> MlsGroup {
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize(&mut &welcome[..]).expect("parse").extract()
    else {
        panic!("welcome")
    };
    let join = MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(2)
        .use_ratchet_tree_extension(true)
        .build();
    StagedWelcome::new_from_welcome(&m.provider, &join, w, None).expect("staged").into_group(&m.provider).expect("join")
}

/// `leaves_process/{raw,engine,engine+durable}/K`: a native member (alice) commits a self-update in a group that
/// holds the bridge's leaf and K per-user leaves; timed is the processing of that commit by the bridge's leaf and
/// all K leaves (what every commit costs a per-user portal). Raw: K + 1 OpenMLS members with in-memory storage.
fn bench_leaves(g: &mut BenchmarkGroup<'_, WallTime>, k: usize) {
    // ----- raw -----
    let alice = raw_member("alice");
    let bridge = raw_member("bridge");
    let mut ga = MlsGroup::new(&alice.provider, &alice.signer, &raw_config(), alice.cred.clone()).expect("group");
    let (_, w, _) = ga
        .add_members(&alice.provider, &alice.signer, &[raw_parse_kp(&alice.provider, &raw_kp(&bridge))])
        .expect("add bridge");
    ga.merge_pending_commit(&alice.provider).expect("merge");
    let mut locals: Vec<(Raw, MlsGroup)> = vec![];
    let gbr = raw_join(&bridge, &w.to_bytes().expect("bytes"));
    locals.push((bridge, gbr));
    for i in 0..k {
        let leaf = raw_member(&format!("leaf{i}"));
        let (commit, w, _) = ga
            .add_members(&alice.provider, &alice.signer, &[raw_parse_kp(&alice.provider, &raw_kp(&leaf))])
            .expect("add leaf");
        ga.merge_pending_commit(&alice.provider).expect("merge");
        let commit = commit.to_bytes().expect("bytes");
        for (m, lg) in locals.iter_mut() {
            raw_process(lg, &m.provider, &commit);
        }
        let lg = raw_join(&leaf, &w.to_bytes().expect("bytes"));
        locals.push((leaf, lg));
    }
    g.bench_function(format!("leaves_process/raw/{k}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let bundle =
                    ga.self_update(&alice.provider, &alice.signer, LeafNodeParameters::default()).expect("update");
                let commit = bundle.into_commit().to_bytes().expect("bytes");
                let t = Instant::now();
                for (m, lg) in locals.iter_mut() {
                    raw_process(lg, &m.provider, &commit);
                }
                total += t.elapsed();
                ga.merge_pending_commit(&alice.provider).expect("merge");
            }
            record(k, "leaves_process", "raw", total, iters);
            total
        })
    });
    drop((ga, locals));

    // ----- engine -----
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    let (ap, am) = eng_member(&store, "alice");
    let (bp, bm) = eng_member(&store, "bridge");
    let cfg = EngineConfig::default();
    let mut ea = PortalGroup::create(ap, am, &cfg, b"leaves").durable_blocking().expect("create");
    let out = ea.add_members(&[&eng_kp(&bp, &bm)]).durable_blocking().expect("add bridge");
    ea.merge_pending_commit().durable_blocking().expect("merge");
    let tree = ea.export_ratchet_tree().expect("tree");
    let mut eb = PortalGroup::join_from_welcome(bp, bm, &cfg, &out.welcome.expect("w"), Some(&tree))
        .durable_blocking()
        .expect("join");
    let policy = LeafPolicy { max_leaves: k, ..LeafPolicy::default() };
    let mut leaves = UserLeaves::open(store.clone(), cfg.clone(), policy, &eb).expect("leaves");
    for i in 0..k {
        let uri = format!("mimi://bench.test/u/irc.net~user{i}");
        let AddLeaf::Committed(p) = leaves.add(&mut eb, &uri).expect("add") else { panic!("not committed") };
        let change = p.durable_blocking().expect("durable");
        ea.process(&change.commit.commit).durable_blocking().expect("alice processes");
        leaves.complete(&mut eb, change, Instant::now()).durable_blocking().expect("complete");
    }
    for (side, durable) in [("engine", false), ("engine+durable", true)] {
        g.bench_function(format!("leaves_process/{side}/{k}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let out = ea.self_update().durable_blocking().expect("update");
                    // Alice is a native member elsewhere; the bridge's leaves share one process.
                    verified_signatures::forget();
                    total += time_engine(durable, || {
                        let (r, d) = eb.process(&out.commit).into_parts();
                        assert!(matches!(r, Ok(Received::Commit { .. })));
                        let (r, d2) = leaves.process_handshake(&out.commit).into_parts();
                        assert_eq!(r.expect("leaves").len(), k);
                        d.and(d2)
                    });
                    ea.merge_pending_commit().durable_blocking().expect("merge");
                }
                record(k, "leaves_process", side, total, iters);
                total
            })
        });
    }
}

// ---------- throughput: 8 concurrent portals ----------

/// Messages per portal in the throughput run (`MLS_BENCH_TP_MESSAGES`, default 2000).
fn tp_messages() -> usize {
    std::env::var("MLS_BENCH_TP_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
}

const PORTALS: usize = 8;

/// Raw OpenMLS: 8 threads, one group each, encrypting `m` messages. Messages per second.
fn tp_raw(m: usize) -> f64 {
    let groups: Vec<_> = (0..PORTALS).map(|_| raw_group(2)).collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for (alice, mut ga, _bob, _gb) in groups {
            s.spawn(move || {
                for i in 0..m {
                    let ct = ga
                        .create_message(&alice.provider, &alice.signer, format!("message {i}").as_bytes())
                        .expect("enc")
                        .to_bytes()
                        .expect("bytes");
                    std::hint::black_box(ct);
                }
            });
        }
    });
    (PORTALS * m) as f64 / t.elapsed().as_secs_f64()
}

/// The engine: 8 portals on one bridge member (one storage, as the daemon runs them), a thread each encrypting
/// `m` messages and handing each ciphertext with its durability to the portal's sender thread, which releases
/// ciphertexts in order once durable (group commit: one hand-off covers whatever was sealed meanwhile, across
/// portals). Returns messages per second (until the last is released) and the durability waits (end of the
/// encrypt → durable), sorted.
fn tp_engine(m: usize) -> (f64, Vec<Duration>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        open_data_dir(dir.path(), Some(Backend::Redb), CommitConfig::default(), &mimi_store::schema::Schema::FIRST)
            .expect("store");
    let (bp, bm) = eng_member(&store, "bridge");
    let cfg = EngineConfig::default();
    let groups: Vec<PortalGroup> = (0..PORTALS)
        .map(|p| {
            let (jp, jm) = eng_member(&store, &format!("peer{p}"));
            let mut g = PortalGroup::create(bp.clone(), bm.clone(), &cfg, format!("portal{p}").as_bytes())
                .durable_blocking()
                .expect("create");
            g.add_members(&[&eng_kp(&jp, &jm)]).durable_blocking().expect("add");
            g.merge_pending_commit().durable_blocking().expect("merge");
            g
        })
        .collect();
    let waits = Mutex::new(Vec::with_capacity(PORTALS * m));
    let t = Instant::now();
    std::thread::scope(|s| {
        for mut g in groups {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, Durability, Instant)>(256);
            let waits = &waits;
            s.spawn(move || {
                let mut mine = Vec::with_capacity(m);
                for (ct, d, sealed) in rx {
                    d.wait_blocking().expect("durable");
                    mine.push(sealed.elapsed());
                    std::hint::black_box(ct);
                }
                waits.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            });
            s.spawn(move || {
                for i in 0..m {
                    let (ct, d) = g.encrypt(format!("message {i}").as_bytes()).into_parts();
                    tx.send((ct.expect("enc"), d, Instant::now())).expect("sender");
                }
            });
        }
    });
    let rate = (PORTALS * m) as f64 / t.elapsed().as_secs_f64();
    let mut w = waits.into_inner().unwrap_or_else(|p| p.into_inner());
    w.sort();
    (rate, w)
}

fn throughput() {
    let m = tp_messages();
    let (mut raw, mut eng, mut waits) = (0f64, 0f64, Vec::new());
    // Alternate and keep the best of each: the machine may be shared.
    for _ in 0..3 {
        raw = raw.max(tp_raw(m));
        let (rate, w) = tp_engine(m);
        if rate > eng {
            eng = rate;
            waits = w;
        }
    }
    let pct = |p: f64| waits.get(((waits.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
    let mean = waits.iter().sum::<Duration>().as_secs_f64() / waits.len().max(1) as f64;
    println!("\nthroughput, {PORTALS} concurrent portals × {m} application messages (best of 3 runs each)");
    println!("  raw OpenMLS (in-memory):      {raw:>9.0} msg/s");
    println!("  engine (released if durable): {eng:>9.0} msg/s  ({:.2}× raw)", eng / raw);
    println!(
        "  durability wait (encrypted → durable): mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        mean * 1e3,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3
    );
}

fn main() {
    if let Ok(spec) = std::env::var("MLS_PROFILE") {
        profile(&spec);
        return;
    }
    let sizes: Vec<usize> = std::env::var("MLS_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 100, 1000]);
    let leaf_counts: Vec<usize> = std::env::var("MLS_BENCH_LEAVES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100]);
    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("mls");
        g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for &n in &sizes {
            // Big groups: operations take up to seconds; flat sampling keeps it to 10 iterations per benchmark.
            g.sampling_mode(if n >= 5000 { SamplingMode::Flat } else { SamplingMode::Auto });
            bench_size(&mut g, n);
            bench_mls_rs(&mut g, n);
        }
        for &k in &leaf_counts {
            bench_leaves(&mut g, k);
        }
        g.finish();
    }
    c.final_summary();

    println!("\nratios vs raw OpenMLS (mean per iteration over all samples)");
    println!(
        "{:>6} {:>14} {:>12} {:>12} {:>8} {:>16} {:>8} {:>12}",
        "N", "op", "raw", "engine", "ratio", "engine+durable", "ratio", "mls-rs"
    );
    let m = MEANS.lock().unwrap_or_else(|p| p.into_inner());
    let rows = sizes
        .iter()
        .flat_map(|&n| {
            ["add_commit", "process_add", "welcome_join", "encrypt", "decrypt"].into_iter().map(move |op| (n, op))
        })
        .chain(leaf_counts.iter().map(|&k| (k, "leaves_process")));
    for (n, op) in rows {
        let (Some(raw), Some(e), Some(ed)) =
            (mean(&m, (n, op, "raw")), mean(&m, (n, op, "engine")), mean(&m, (n, op, "engine+durable")))
        else {
            continue;
        };
        let rs = mean(&m, (n, op, "mls-rs")).map_or_else(|| "-".to_owned(), |v| format!("{:.1}µs", v * 1e6));
        println!(
            "{n:>6} {op:>14} {:>10.1}µs {:>10.1}µs {:>7.2}× {:>14.1}µs {:>7.2}× {rs:>12}",
            raw * 1e6,
            e * 1e6,
            e / raw,
            ed * 1e6,
            ed / raw
        );
    }
    if std::env::var("MLS_BENCH_THROUGHPUT").as_deref() != Ok("0") {
        throughput();
    }
}
