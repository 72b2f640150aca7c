//! `[media]`: the daemon's media blob store (`bridge_media`).

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// `[media]`: limits and retention of the files connectors store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaTable {
    /// Largest file taken, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Spanned<u64>,
    /// Most bytes stored in all.
    #[serde(default = "default_quota_bytes")]
    pub quota_bytes: Spanned<u64>,
    /// Days a file is kept (0: forever).
    #[serde(default = "default_retention_days")]
    pub retention_days: Spanned<u64>,
    /// Let imports reach loopback and private addresses (tests only: it opens the daemon to SSRF).
    #[serde(default)]
    pub allow_internal_fetch: bool,
}

fn default_max_bytes() -> Spanned<u64> {
    Spanned::new(0..0, 25 << 20)
}

fn default_quota_bytes() -> Spanned<u64> {
    Spanned::new(0..0, 10 << 30)
}

fn default_retention_days() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}

impl Default for MediaTable {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            quota_bytes: default_quota_bytes(),
            retention_days: default_retention_days(),
            allow_internal_fetch: false,
        }
    }
}

impl MediaTable {
    /// How long files are kept (`None`: forever).
    pub fn retention(&self) -> Option<Duration> {
        match *self.retention_days.get_ref() {
            0 => None,
            d => Some(Duration::from_secs(d * 24 * 3600)),
        }
    }

    /// Checks the ranges; the error names the key and says why.
    pub(super) fn validate(&self, file: &Path, text: &str) -> Result<(), super::ConfigError> {
        let (max, quota) = (*self.max_bytes.get_ref(), *self.quota_bytes.get_ref());
        if max == 0 || max > quota {
            let why = format!("must be between 1 and media.quota_bytes ({quota})");
            return Err(super::at(file, text, self.max_bytes.span(), "media.max_bytes", why));
        }
        if *self.retention_days.get_ref() > 36_500 {
            let span = self.retention_days.span();
            return Err(super::at(file, text, span, "media.retention_days", "must be 0 (forever) to 36500 days"));
        }
        Ok(())
    }
}
