//! `[retention]`: how long the daemon keeps what grows with use (`bridge_core::retention`).

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// `[retention]`: days each kind of record is kept (0: forever) and seconds between passes of the pruner.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionTable {
    /// Room log entries (hub and follower copies).
    #[serde(default = "days_30")]
    pub hub_log_days: Spanned<u64>,
    /// Message records, their ID-map entries and reactions.
    #[serde(default = "days_90")]
    pub messages_days: Spanned<u64>,
    /// Failed deliveries.
    #[serde(default = "days_30")]
    pub failed_days: Spanned<u64>,
    /// Records of claimed KeyPackages (an invitation not used within this time expires).
    #[serde(default = "days_30")]
    pub claims_days: Spanned<u64>,
    /// Seconds between passes.
    #[serde(default = "hourly")]
    pub interval_secs: Spanned<u64>,
}

fn days_30() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}

fn days_90() -> Spanned<u64> {
    Spanned::new(0..0, 90)
}

fn hourly() -> Spanned<u64> {
    Spanned::new(0..0, 3600)
}

impl Default for RetentionTable {
    fn default() -> Self {
        Self {
            hub_log_days: days_30(),
            messages_days: days_90(),
            failed_days: days_30(),
            claims_days: days_30(),
            interval_secs: hourly(),
        }
    }
}

/// Longest retention that can be set (100 years), so that days → milliseconds never overflows.
const MAX_DAYS: u64 = 36_500;

impl RetentionTable {
    /// The pruner's configuration.
    pub fn config(&self) -> bridge_core::retention::RetentionConfig {
        let days = |d: &Spanned<u64>| match *d.get_ref() {
            0 => None,
            n => Some(Duration::from_secs(n * 24 * 3600)),
        };
        bridge_core::retention::RetentionConfig {
            hub_log: days(&self.hub_log_days),
            messages: days(&self.messages_days),
            failed: days(&self.failed_days),
            claims: days(&self.claims_days),
            interval: Duration::from_secs(*self.interval_secs.get_ref()),
        }
    }

    /// Checks the ranges; the error names the key and says why.
    pub(super) fn validate(&self, file: &Path, text: &str) -> Result<(), super::ConfigError> {
        for (key, v) in [
            ("retention.hub_log_days", &self.hub_log_days),
            ("retention.messages_days", &self.messages_days),
            ("retention.failed_days", &self.failed_days),
            ("retention.claims_days", &self.claims_days),
        ] {
            if *v.get_ref() > MAX_DAYS {
                return Err(super::at(file, text, v.span(), key, format!("must be 0 (forever) to {MAX_DAYS} days")));
            }
        }
        if !(60..=86_400).contains(self.interval_secs.get_ref()) {
            let span = self.interval_secs.span();
            return Err(super::at(file, text, span, "retention.interval_secs", "must be between 60 and 86400 seconds"));
        }
        Ok(())
    }
}
