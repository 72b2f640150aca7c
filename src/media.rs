//! The daemon's media blob store (`bridge_media`), set up from `[media]` and `[mimi] public_url`, and pruned by
//! the retention pruner.

use bridge_core::retention::Retained;
use bridge_media::fetch::Fetcher;
use bridge_media::{FileMediaStore, MediaConfig};
use std::path::Path;
use std::sync::Arc;

/// Opens the store under `data_dir/media`, its links under `public_url`. Warns when links would point at a
/// loopback address (nobody on another machine could open them: set `[mimi] public_url`).
pub fn open(cfg: &crate::config::MediaTable, data_dir: &Path, public_url: &str) -> Result<Arc<FileMediaStore>, String> {
    let host = public_url.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or("");
    if host == "localhost" || host.starts_with("127.") || public_url.contains("://[::1]") {
        tracing::warn!(
            public_url,
            "media links point at a loopback address: other networks' users cannot open them; set [mimi] public_url"
        );
    }
    // Imports fetch from the public internet: the system's CAs. Without them https imports fail, nothing else.
    let roots = bridge_net::tls::roots(None, "the system's CA store").unwrap_or_else(|e| {
        tracing::warn!(error = %e, "media imports over https will fail");
        rustls::RootCertStore::empty()
    });
    let fetcher = Fetcher::new(roots, cfg.allow_internal_fetch)?;
    let config = MediaConfig {
        dir: data_dir.join("media"),
        public_url: public_url.to_owned(),
        max_bytes: *cfg.max_bytes.get_ref(),
        quota_bytes: *cfg.quota_bytes.get_ref(),
        retention: cfg.retention(),
    };
    FileMediaStore::open(config, fetcher).map(Arc::new).map_err(|e| e.to_string())
}

/// The media store as one of the pruner's kinds.
pub struct PrunedMedia(pub Arc<FileMediaStore>);

#[async_trait::async_trait]
impl Retained for PrunedMedia {
    fn name(&self) -> &str {
        "media"
    }

    async fn prune(&self, now_ms: u64) -> Result<u64, String> {
        self.0.prune(now_ms).await.map_err(|e| e.to_string())
    }
}
