//! Retention: one [`Pruner`] for everything the daemon keeps that grows with use, configured by one
//! [`RetentionConfig`] (the daemon's `[retention]` table).
//!
//! | what | kept for | where |
//! |---|---|---|
//! | room log entries (hub and follower copies) | [`RetentionConfig::hub_log`] | [`mimi_provider::Provider::prune_log`]: never the last entry nor one the bridge's member has not read; readers behind are told to rejoin (410) |
//! | message records, their ID-map entries and reactions | [`RetentionConfig::messages`] | `msgs`, `ids`, `reactions`: edits, replies and reactions to a forgotten message are bridged as new messages |
//! | failed deliveries | [`RetentionConfig::failed`] | `failed` |
//! | claimed-KeyPackage records | [`RetentionConfig::claims`] | [`mimi_provider::Provider::prune_claims`]: an Add with a KeyPackage claimed longer ago is refused |
//! | invitations to Welcomes removed from the log | with the log | [`mimi_provider::Provider::prune_invitations`] |
//! | whatever else registers ([`Retained`]: media blobs of the connectors) | its own setting | its own |
//!
//! `None` keeps a kind forever. Records written before retention existed have no time: the first pass stamps
//! them, so they go one period after the upgrade. Each pass works in pages, never reading a tree whole; a kind
//! that fails is logged and retried at the next pass, the others are pruned all the same.

use crate::outbox::now_ms;
use crate::repo::Repo;
use mimi_provider::Provider;
use mimi_store::{Batch, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Records handled per batch.
const PAGE: usize = 1024;

/// How long each kind of record is kept (`None`: forever), and how often the pruner runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Room log entries.
    pub hub_log: Option<Duration>,
    /// Message records, the ID map and reactions.
    pub messages: Option<Duration>,
    /// Failed deliveries.
    pub failed: Option<Duration>,
    /// Claimed-KeyPackage records.
    pub claims: Option<Duration>,
    /// Time between passes.
    pub interval: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for RetentionConfig {
    /// The documented defaults: logs and claims 30 days, messages 90, failed deliveries 30; a pass an hour.
    fn default() -> Self {
        Self {
            hub_log: Some(30 * DAY),
            messages: Some(90 * DAY),
            failed: Some(30 * DAY),
            claims: Some(30 * DAY),
            interval: Duration::from_secs(3600),
        }
    }
}

/// Something else that grows and registers with the [`Pruner`] (the connectors' media blob store).
#[async_trait::async_trait]
pub trait Retained: Send + Sync {
    /// A name for logs and reports.
    fn name(&self) -> &str;
    /// Removes what its own retention lets go at `now_ms`; how many records it removed, or why it could not
    /// (logged; the pass goes on with the other kinds).
    async fn prune(&self, now_ms: u64) -> Result<u64, String>;
}

/// What one pass removed, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Room log entries.
    pub log_entries: u64,
    /// Message records (each with its ID-map entries and reactions).
    pub messages: u64,
    /// Failed deliveries.
    pub failed: u64,
    /// Claimed-KeyPackage records.
    pub claims: u64,
    /// Invitations whose Welcome was removed.
    pub invitations: u64,
    /// Records stamped with a time (written before retention existed).
    pub stamped: u64,
    /// Markers of inbound events published but never recorded, whose network never redelivered them
    /// ([`crate::repo::write::sent`]), or given up ([`crate::repo::write::given_up`]), after the failed
    /// deliveries' retention.
    pub sent_markers: u64,
    /// Registered kinds: name and count.
    pub others: Vec<(String, u64)>,
    /// Kinds whose pruning failed this pass (logged; retried at the next): name and why.
    pub failures: Vec<(String, String)>,
}

fn report_failure(kind: &str, e: &dyn std::fmt::Display) -> (String, String) {
    (kind.to_owned(), e.to_string())
}

/// The daemon's pruner: [`Pruner::run`] makes a pass every [`RetentionConfig::interval`].
pub struct Pruner {
    store: Store,
    provider: Provider,
    config: RetentionConfig,
    others: Vec<Arc<dyn Retained>>,
    /// When the pruner was made (ms since the UNIX epoch): the start of [`WAITING_MARK_GRACE`].
    started_ms: u64,
}

/// How long after the pruner starts the marks of messages waiting for the hub of a room hosted elsewhere are kept
/// past the failed-deliveries retention ([`Pruner::prune`]): their portals' time to try them again.
pub const WAITING_MARK_GRACE: Duration = Duration::from_secs(24 * 3600);

fn cutoff(now_ms: u64, keep: Option<Duration>) -> Option<u64> {
    keep.map(|k| now_ms.saturating_sub(u64::try_from(k.as_millis()).unwrap_or(u64::MAX)))
}

impl Pruner {
    /// A pruner of `store` and `provider`'s records.
    pub fn new(store: Store, provider: Provider, config: RetentionConfig) -> Self {
        Self { store, provider, config, others: Vec::new(), started_ms: now_ms() }
    }

    /// Adds a kind of record to every pass.
    pub fn register(&mut self, other: Arc<dyn Retained>) {
        self.others.push(other);
    }

    /// One pass at time `now_ms`.
    pub async fn prune(&self, now_ms: u64) -> PruneReport {
        let mut report = PruneReport::default();
        let failed = |kind: &str, e: &dyn std::fmt::Display| {
            tracing::error!(kind, error = %e, "retention of one kind failed; the pass goes on");
            report_failure(kind, e)
        };
        let mut failures = Vec::new();
        if let Some(before) = cutoff(now_ms, self.config.hub_log) {
            match self.provider.prune_log(before).await {
                Ok(n) => report.log_entries = n,
                Err(e) => failures.push(failed("hub log", &e)),
            }
            match self.provider.prune_invitations().await {
                Ok(n) => report.invitations = n,
                Err(e) => failures.push(failed("invitations", &e)),
            }
        }
        if let Some(before) = cutoff(now_ms, self.config.claims) {
            match self.provider.prune_claims(before).await {
                Ok(n) => report.claims = n,
                Err(e) => failures.push(failed("claims", &e)),
            }
        }
        if let Some(before) = cutoff(now_ms, self.config.messages)
            && let Err(e) = self.prune_messages(now_ms, before, &mut report).await
        {
            failures.push(failed("messages", &e));
        }
        if let Some(before) = cutoff(now_ms, self.config.failed) {
            match self.prune_failed(before).await {
                Ok(n) => report.failed = n,
                Err(e) => failures.push(failed("failed deliveries", &e)),
            }
            match self.prune_sent_markers(before, now_ms).await {
                Ok(n) => report.sent_markers = n,
                Err(e) => failures.push(failed("published-not-recorded markers", &e)),
            }
        }
        for other in &self.others {
            match other.prune(now_ms).await {
                Ok(n) => report.others.push((other.name().to_owned(), n)),
                Err(e) => failures.push(failed(other.name(), &e)),
            }
        }
        report.failures = failures;
        report
    }

    async fn prune_messages(&self, now_ms: u64, before: u64, report: &mut PruneReport) -> Result<(), StoreError> {
        let mut from = Vec::new();
        loop {
            let page = Repo::new(&self.store).messages_page(&from, PAGE)?;
            let mut b = Batch::new();
            for (key, rec) in &page {
                match rec.at_ms {
                    None => {
                        let mut stamped = rec.clone();
                        stamped.at_ms = Some(now_ms);
                        b.put(crate::repo::MSGS, key.clone(), serde_json::to_vec(&stamped).unwrap_or_default());
                        report.stamped += 1;
                    }
                    Some(at) if at < before => {
                        for (tree, k) in Repo::new(&self.store).message_keys(key)? {
                            b.delete(tree, k);
                        }
                        report.messages += 1;
                    }
                    Some(_) => {}
                }
            }
            self.commit(b).await?;
            match page.last() {
                Some((last, _)) if page.len() == PAGE => from = [last.as_slice(), &[0]].concat(),
                _ => return Ok(()),
            }
        }
    }

    async fn prune_failed(&self, before: u64) -> Result<u64, StoreError> {
        let (mut from, mut removed) = (Vec::new(), 0);
        loop {
            let page = Repo::new(&self.store).failed_page(&from, PAGE)?;
            let mut b = Batch::new();
            for (key, _) in page.iter().filter(|(_, r)| r.failed_at_ms < before) {
                b.delete(crate::repo::FAILED, key.clone());
                removed += 1;
            }
            self.commit(b).await?;
            match page.last() {
                Some((last, _)) if page.len() == PAGE => from = [last.as_slice(), &[0]].concat(),
                _ => return Ok(removed),
            }
        }
    }

    /// Markers older than `before` go, except, for [`WAITING_MARK_GRACE`] after the pruner started, those of
    /// messages still waiting for the hub of a room hosted elsewhere ([`crate::repo::SentMarker::submitted`]):
    /// their portal publishes them again once it opens at start, and gives them up, telling their senders, if
    /// their hub still does not take them. After a daemon stopped for longer than this retention, pruning such a
    /// mark at the first pass would lose its message without a word. One still waiting after the grace (its portal
    /// could not open, or is no longer linked to a room hosted elsewhere) goes, with a warning that names it.
    async fn prune_sent_markers(&self, before: u64, now_ms: u64) -> Result<u64, StoreError> {
        let (mut from, mut removed) = (b"p".to_vec(), 0);
        let grace_over = now_ms >= self.started_ms.saturating_add(WAITING_MARK_GRACE.as_millis() as u64);
        loop {
            let page = self.store.scan_prefix_from(crate::repo::IDS, b"p", &from, PAGE)?;
            let mut b = Batch::new();
            for (key, value) in &page {
                let stale = match serde_json::from_slice::<crate::repo::SentMarker>(value) {
                    Err(_) => true,
                    Ok(m) if m.at_ms >= before => false,
                    Ok(m) if m.submitted.is_some() && !m.given_up => {
                        if grace_over {
                            let portal = m.portal.as_ref().map(ToString::to_string).unwrap_or_default();
                            tracing::warn!(%portal, message = %m.message_id, since_ms = m.at_ms,
                                "a message still waiting for the hub of a room hosted elsewhere was neither taken nor \
                                 given up: dropped by retention, not bridged");
                            metrics::counter!("mimi_bridge_errors_total", "kind" => "hub_mark_dropped").increment(1);
                        }
                        grace_over
                    }
                    Ok(_) => true,
                };
                if stale {
                    b.delete(crate::repo::IDS, key.clone());
                    removed += 1;
                }
            }
            self.commit(b).await?;
            match page.last() {
                Some((last, _)) if page.len() == PAGE => from = [last.as_slice(), &[0]].concat(),
                _ => return Ok(removed),
            }
        }
    }

    async fn commit(&self, b: Batch) -> Result<(), StoreError> {
        if b.is_empty() {
            return Ok(());
        }
        self.store.commit_later(b).await.unwrap_or(Err(StoreError::Closed))
    }

    /// Makes a pass every interval (the first one interval after start) until `stop` turns true. A failed pass
    /// is logged and retried at the next interval.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let r = self.prune(now_ms()).await;
            tracing::info!(report = ?r, "retention pass");
        }
    }
}
