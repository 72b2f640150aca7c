//! `mimi-bridge run`: wiring and the process lifecycle.

use crate::config::Config;
use bridge_core::group::LocalRoom;
use bridge_core::router::{RouterConfig, RouterHandle};
use bridge_core::store::repo::PortalRecord;
use bridge_core::store::{CommitConfig, open_data_dir};
use bridge_core::{AccountId, LegId, PortalId};
use std::sync::Arc;

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(cfg))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MIMI_BRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

async fn serve(cfg: Config) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = &cfg.bridge.data_dir;
    let store = open_data_dir(data_dir, Some(cfg.bridge.store), CommitConfig::default())?;
    tracing::info!(data_dir = %data_dir.display(), backend = %cfg.bridge.store, "store open");
    let mut rc = RouterConfig::new(cfg.bridge.domain.get_ref().clone());
    rc.queue_depth = cfg.bridge.queue_depth;
    rc.max_event_bytes = cfg.bridge.max_event_bytes;
    let router = RouterHandle::start(rc, store, Arc::new(LocalRoom)).await?;

    // The config's portals and legs are ensured at every start; links made at runtime persist in the store.
    for p in &cfg.portal {
        let id = PortalId::new(p.name.get_ref().clone())?;
        router.create_portal(PortalRecord { id: id.clone(), mls_identity: p.mls_identity }).await?;
        for leg in &p.legs {
            let leg_id = LegId::new(AccountId::parse(leg.account.get_ref())?, leg.room.get_ref().clone())?;
            router.link(leg_id, &id).await?;
        }
    }
    tracing::info!(portals = cfg.portal.len(), legs = router.legs().len(), "bridge running");

    wait_for_signal().await?;
    tracing::info!("stopping: draining portal queues");
    router.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
