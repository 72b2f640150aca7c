//! What the MLS benchmarks share: a router whose room of record is `MlsRooms` on a fresh redb store.

use bridge_core::MlsRooms;
use bridge_core::router::{RouterConfig, RouterHandle};
use mimi_mls::{EngineConfig, LocalMember, MlsBackend};
use mimi_provider::{JoinPolicy, Provider};
use mimi_store::{Backend, CommitConfig, Store};
use openmls::prelude::SignatureScheme;
use std::path::Path;
use std::sync::Arc;

/// The bridge's MIMI domain in the benchmarks.
pub const DOMAIN: &str = "bench.test";

/// A router configured by `cfg` on a redb store in `dir`, with MLS groups sequenced by the local hub as its room
/// of record (attached both ways); the store too, for its commit counters.
pub async fn mls_router(dir: &Path, cfg: RouterConfig) -> (RouterHandle, Arc<MlsRooms>, Store) {
    let store = bridge_core::open_store(dir, Some(Backend::Redb), CommitConfig::default()).expect("store");
    let provider = Provider::open(DOMAIN, store.clone()).expect("provider");
    let mls = Arc::new(MlsBackend::new(store.clone(), "bridge").expect("mls"));
    let me = LocalMember::load_or_create(&mls, &format!("mimi://{DOMAIN}/u/bridge"), SignatureScheme::ED25519)
        .expect("member")
        .durable()
        .await
        .expect("durable");
    let room = MlsRooms::new(provider, mls, Arc::new(me), EngineConfig::default(), JoinPolicy::Open);
    let router = RouterHandle::start(cfg, store.clone(), room.clone()).await.expect("router");
    room.attach_router(router.clone());
    (router, room, store)
}

/// The `p` quantile of `sorted` (NaN if empty).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}
