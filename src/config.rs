//! The configuration file: types, loading, and errors that name file, line, column and key.
//!
//! Every table rejects unknown keys; a misspelt key gets a "did you mean" hint. Semantic checks (a leg naming an
//! account that is not configured, a room linked twice, a plain-HTTP listener off loopback) point at the offending
//! key too. `config.example.toml` documents every key.
//!
//! Secrets stay out of the file: the admin token comes from `admin.token_file` or `admin.token = "env:NAME"`, and
//! account tables follow the `KEY_file` / `"env:NAME"` convention of [`crate::secrets`].

use crate::secrets::{self, Secret};
use bridge_api::{AccountId, PortalId};
use bridge_core::repo::MlsIdentity;
use mimi_mls::LeafPolicy;
use mimi_store::Backend;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

mod media;
mod retention;
pub use media::MediaTable;
pub use retention::RetentionTable;

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/mimi-bridge/config.toml";

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[bridge]`.
    pub bridge: BridgeConfig,
    /// `[mimi]`.
    #[serde(default)]
    pub mimi: MimiConfig,
    /// `[admin]`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogConfig,
    /// `[quota]`.
    #[serde(default)]
    pub quota: QuotaTable,
    /// `[retention]`.
    #[serde(default)]
    pub retention: RetentionTable,
    /// `[media]`.
    #[serde(default)]
    pub media: MediaTable,
    /// `[irc.NAME]` tables.
    #[serde(default)]
    pub irc: BTreeMap<String, Spanned<toml::Table>>,
    /// `[matrix.NAME]` tables.
    #[serde(default)]
    pub matrix: BTreeMap<String, Spanned<toml::Table>>,
    /// `[xmpp.NAME]` tables.
    #[serde(default)]
    pub xmpp: BTreeMap<String, Spanned<toml::Table>>,
    /// `[[portal]]` entries.
    #[serde(default)]
    pub portal: Vec<PortalConfig>,
    /// The file and its text, for locating errors found after parsing.
    #[serde(skip)]
    source: Source,
}

#[derive(Debug, Default)]
struct Source {
    path: PathBuf,
    text: String,
}

/// `[bridge]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// MIMI domain: identities are `mimi://DOMAIN/u/...`.
    pub domain: Spanned<String>,
    /// Where the embedded store lives (created 0700).
    pub data_dir: PathBuf,
    /// Storage backend.
    #[serde(default = "default_store")]
    pub store: Backend,
    /// Capacity of each portal's queue.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: Spanned<usize>,
    /// Largest inbound event accepted, in bytes.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Seconds a graceful shutdown may take before the daemon gives up and exits non-zero.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Spanned<u64>,
    /// Seconds between key updates of each of the bridge's MLS leaves (post-compromise security); 0: never.
    #[serde(default = "default_key_update")]
    pub mls_key_update_secs: Spanned<u64>,
    /// Seconds an open portal's MLS group stays in memory without a message before it closes; 0: never.
    #[serde(default = "default_portal_idle_close")]
    pub portal_idle_close_secs: Spanned<u64>,
    /// How many portals' MLS groups may be open at once (the least used close beyond it); 0: no bound.
    #[serde(default = "default_max_open_portals")]
    pub max_open_portals: Spanned<usize>,
    /// Seconds a delivery to a leg is retried before it is given up and listed as undeliverable.
    #[serde(default = "default_delivery_give_up")]
    pub delivery_give_up_secs: Spanned<u64>,
    /// Seconds a message for the hub of a room hosted elsewhere is retried (counted from when it was first sent,
    /// across restarts) before it is given up and its sender told; unset: [`Config::hub_give_up`].
    #[serde(default)]
    pub hub_give_up_secs: Option<Spanned<u64>>,
    /// `store = "postgres"`: a file (not accessible to others) holding the connection string.
    #[serde(default)]
    pub postgres_url_file: Option<Spanned<PathBuf>>,
    /// `store = "postgres"`: `"env:NAME"`, the environment variable holding the connection string (a literal
    /// connection string in the file is refused: it may hold a password).
    #[serde(default)]
    pub postgres_url: Option<Spanned<String>>,
    /// The CA that signs the PostgreSQL server's certificate (`sslmode=require`); default: the system store.
    #[serde(default)]
    pub postgres_ca_file: Option<PathBuf>,
    /// Seconds the leader lease lasts without renewal: a standby takes over this long after the active daemon
    /// died.
    #[serde(default = "default_postgres_lease")]
    pub postgres_lease_secs: Spanned<u64>,
    /// When another daemon is active on the database: wait for its lease (a standby) instead of failing.
    #[serde(default)]
    pub postgres_standby: bool,
}

impl BridgeConfig {
    /// How long an open portal stays open without a message (`None`: never closes).
    pub fn portal_idle_close(&self) -> Option<std::time::Duration> {
        Some(*self.portal_idle_close_secs.get_ref()).filter(|s| *s > 0).map(std::time::Duration::from_secs)
    }

    /// How many portals may be open at once (`None`: no bound).
    pub fn max_open_portals(&self) -> Option<usize> {
        Some(*self.max_open_portals.get_ref()).filter(|m| *m > 0)
    }

    /// The key-update interval of the bridge's MLS leaves (`None`: never).
    pub fn key_update_interval(&self) -> Option<std::time::Duration> {
        Some(*self.mls_key_update_secs.get_ref()).filter(|s| *s > 0).map(std::time::Duration::from_secs)
    }
}

/// Bounds of `bridge.delivery_give_up_secs` and `bridge.hub_give_up_secs`.
const MIN_GIVE_UP_SECS: u64 = 60;
const MAX_GIVE_UP_SECS: u64 = 30 * 86_400;
/// Most of `bridge.portal_idle_close_secs`.
const MAX_IDLE_CLOSE_SECS: u64 = 30 * 86_400;
/// `bridge.hub_give_up_secs` when unset (and `retention.failed_days` allows it).
const DEFAULT_HUB_GIVE_UP_SECS: u64 = 86_400;

fn default_store() -> Backend {
    Backend::Redb
}
fn default_postgres_lease() -> Spanned<u64> {
    Spanned::new(0..0, 5)
}
fn default_queue_depth() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_key_update() -> Spanned<u64> {
    Spanned::new(0..0, bridge_core::mls_rooms::DEFAULT_KEY_UPDATE.as_secs())
}
fn default_portal_idle_close() -> Spanned<u64> {
    Spanned::new(0..0, bridge_core::mls_rooms::DEFAULT_IDLE_CLOSE.as_secs())
}
fn default_max_open_portals() -> Spanned<usize> {
    Spanned::new(0..0, bridge_core::mls_rooms::DEFAULT_MAX_OPEN)
}
fn default_delivery_give_up() -> Spanned<u64> {
    Spanned::new(0..0, 3600)
}
fn default_shutdown_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30)
}
fn default_max_event_bytes() -> usize {
    64 * 1024
}

/// Who may register native MLS clients.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who can reach the endpoint.
    #[default]
    Open,
    /// Only with a registration token.
    Token,
    /// Nobody.
    Closed,
}

/// `[mimi]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MimiConfig {
    /// MIMI endpoints and client API.
    #[serde(default = "default_mimi_listen")]
    pub listen: Spanned<SocketAddr>,
    /// TLS certificate (PEM). Required off loopback.
    pub tls_cert: Option<Spanned<PathBuf>>,
    /// TLS key (PEM); must not be readable by other users.
    pub tls_key: Option<Spanned<PathBuf>>,
    /// CA certificates for peer authentication (PEM); the system store when not set.
    pub trust_anchors: Option<Spanned<PathBuf>>,
    /// The base URL peers and clients reach these endpoints under (`https://mimi.example.org`), for the
    /// discovery directory; default: `http(s)://` + the listen address.
    pub public_url: Option<String>,
    /// Who may register native clients.
    #[serde(default)]
    pub registration: Registration,
    /// With `registration = "token"`: the token clients present, as `"env:NAME"`.
    pub registration_token: Option<Spanned<String>>,
    /// With `registration = "token"`: a file holding the token (not readable by other users).
    pub registration_token_file: Option<Spanned<PathBuf>>,
    /// Connections open at once on the listener (TLS handshakes included); lowered to half of the soft
    /// `RLIMIT_NOFILE` if that is less.
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<usize>,
    /// Connections open at once from one IP address (IPv6: one /64).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: Spanned<usize>,
    /// Seconds a client has to send a request head; also how long a new or idle keep-alive connection may send
    /// nothing before it is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: Spanned<u64>,
    /// Seconds the daemon waits, in the middle of a request, for the next bytes of its body or for the client to
    /// take the next bytes of the answer; then the connection is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: Spanned<u64>,
    /// `[[mimi.peer]]` entries.
    #[serde(default)]
    pub peer: Vec<PeerConfig>,
}

/// `[quota]`: what one native MLS user may put into rooms' logs (`mimi_provider::quota`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaTable {
    /// Messages (application messages, handshakes, Welcomes, updates) per user and minute.
    #[serde(default = "default_user_messages_per_minute")]
    pub user_messages_per_minute: Spanned<u32>,
    /// Bytes of those per user and minute.
    #[serde(default = "default_user_bytes_per_minute")]
    pub user_bytes_per_minute: Spanned<u64>,
    /// Rooms one user may create on this daemon.
    #[serde(default = "default_user_rooms")]
    pub user_rooms: Spanned<usize>,
}

fn default_user_rooms() -> Spanned<usize> {
    Spanned::new(0..0, mimi_provider::quota::QuotaConfig::default().rooms)
}

fn default_user_messages_per_minute() -> Spanned<u32> {
    Spanned::new(0..0, mimi_provider::quota::QuotaConfig::default().messages_per_minute)
}

fn default_user_bytes_per_minute() -> Spanned<u64> {
    Spanned::new(0..0, mimi_provider::quota::QuotaConfig::default().bytes_per_minute)
}

impl Default for QuotaTable {
    fn default() -> Self {
        Self {
            user_messages_per_minute: default_user_messages_per_minute(),
            user_bytes_per_minute: default_user_bytes_per_minute(),
            user_rooms: default_user_rooms(),
        }
    }
}

impl QuotaTable {
    /// The quotas as the provider takes them.
    pub fn config(&self) -> mimi_provider::quota::QuotaConfig {
        mimi_provider::quota::QuotaConfig {
            messages_per_minute: *self.user_messages_per_minute.get_ref(),
            bytes_per_minute: *self.user_bytes_per_minute.get_ref(),
            rooms: *self.user_rooms.get_ref(),
        }
    }
}

impl MimiConfig {
    /// The listener's limits as configured (before [`Limits::within_nofile`](crate::listener::Limits::within_nofile)).
    pub fn limits(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            max_connections: *self.max_connections.get_ref(),
            max_connections_per_ip: *self.max_connections_per_ip.get_ref(),
            header_timeout: std::time::Duration::from_secs(*self.header_timeout_secs.get_ref()),
            idle_timeout: std::time::Duration::from_secs(*self.idle_timeout_secs.get_ref()),
            ..crate::listener::Limits::default()
        }
    }
}

impl Default for MimiConfig {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, default_mimi_listen_addr()),
            tls_cert: None,
            tls_key: None,
            trust_anchors: None,
            public_url: None,
            registration: Registration::Open,
            registration_token: None,
            registration_token_file: None,
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            header_timeout_secs: default_header_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            peer: Vec::new(),
        }
    }
}

fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, crate::listener::Limits::default().max_connections)
}
fn default_max_connections_per_ip() -> Spanned<usize> {
    Spanned::new(0..0, crate::listener::Limits::default().max_connections_per_ip)
}
fn default_header_timeout() -> Spanned<u64> {
    Spanned::new(0..0, crate::listener::Limits::default().header_timeout.as_secs())
}
fn default_idle_timeout() -> Spanned<u64> {
    Spanned::new(0..0, crate::listener::Limits::default().idle_timeout.as_secs())
}

fn default_mimi_listen_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8448))
}
fn default_mimi_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, default_mimi_listen_addr())
}

/// `[[mimi.peer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's MIMI domain.
    pub domain: String,
    /// Its base URL.
    pub url: Spanned<String>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin API, metrics and health.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<SocketAddr>,
    /// File holding the admin token (not readable by other users).
    pub token_file: Option<Spanned<PathBuf>>,
    /// The admin token from the environment: `"env:NAME"` (literal tokens are refused).
    pub token: Option<Spanned<String>>,
    /// Serve `/metrics` without the token (for scrapers on a trusted network).
    #[serde(default)]
    pub public_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), token_file: None, token: None, public_metrics: false }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journald` when started by systemd with stdout on the journal (`JOURNAL_STREAM`), `text` otherwise.
    #[default]
    Auto,
    /// Human-readable lines with timestamps.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
    /// Lines without timestamps or colours, prefixed with the syslog priority (`<3>`) journald understands.
    Journald,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `info,bridge_core=debug`); the `MIMI_BRIDGE_LOG` variable overrides it.
    #[serde(default = "default_log_level")]
    pub level: Spanned<String>,
    /// Output format; the `MIMI_BRIDGE_LOG_FORMAT` variable overrides it.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: default_log_level(), format: LogFormat::Auto }
    }
}

fn default_log_level() -> Spanned<String> {
    Spanned::new(0..0, "info".to_owned())
}

fn default_admin_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 8449)))
}

/// `[[portal]] join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PortalJoin {
    /// Anyone who can fetch the GroupInfo.
    #[default]
    Open,
    /// Only users a member invited.
    Invite,
}

fn default_join() -> Spanned<PortalJoin> {
    Spanned::new(0..0, PortalJoin::Open)
}

fn default_mls_identity() -> Spanned<MlsIdentity> {
    Spanned::new(0..0, MlsIdentity::Shared)
}

/// `[[portal]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Portal name; room URI `mimi://DOMAIN/r/NAME`.
    pub name: Spanned<String>,
    /// How legacy senders appear in the MLS group.
    #[serde(default = "default_mls_identity")]
    pub mls_identity: Spanned<MlsIdentity>,
    /// Who may join the portal's MLS group by external commit: anyone who can fetch its GroupInfo (`open`, the
    /// default) or only users invited by a member (`invite`).
    #[serde(default = "default_join")]
    pub join: Spanned<PortalJoin>,
    /// With `mls_identity = "per-user"`: most legacy users with a leaf of their own at once (default 100); the
    /// others speak through the bridge's shared leaf.
    pub max_user_leaves: Option<Spanned<usize>>,
    /// With `mls_identity = "per-user"`: seconds of silence after which a user's leaf is removed (default 3600).
    pub user_leaf_idle_secs: Option<Spanned<u64>>,
    /// With `mls_identity = "per-user"`: most new speakers' leaves one commit adds (default 32). With 1, a new
    /// speaker's first line waits for their own leaf; with more, it goes out from the shared leaf and the leaves of
    /// the new speakers of the next 50 ms are added together.
    pub user_leaf_add_batch: Option<Spanned<usize>>,
    /// A room another MIMI provider hosts (`mimi://DOMAIN/r/NAME`, DOMAIN one of the `[[mimi.peer]]`s): the
    /// portal's bridge leaf joins it by external commit instead of this bridge hosting a room of its own, so that
    /// two bridges federate one room, each with its own legs. The room must be open to the bridge; shared leaf
    /// only, and no `join`.
    pub room: Option<Spanned<String>>,
    /// Linked legacy rooms.
    #[serde(default)]
    pub legs: Vec<LegConfig>,
}

impl PortalConfig {
    /// The room hosted elsewhere that `portal` joins, if this is its table and it names one.
    pub fn remote_room_of(&self, portal: &PortalId) -> Option<&str> {
        self.room.as_ref().filter(|_| self.name.get_ref() == portal.as_str()).map(|r| r.get_ref().as_str())
    }

    /// The hub's join policy of the portal's room.
    pub fn join_policy(&self) -> mimi_protocol::JoinPolicy {
        match self.join.get_ref() {
            PortalJoin::Open => mimi_protocol::JoinPolicy::Open,
            PortalJoin::Invite => mimi_protocol::JoinPolicy::Invite,
        }
    }

    /// The per-user leaf limits (defaults where not set).
    pub fn leaf_policy(&self) -> LeafPolicy {
        let mut policy = LeafPolicy::default();
        if let Some(n) = &self.max_user_leaves {
            policy.max_leaves = *n.get_ref();
        }
        if let Some(secs) = &self.user_leaf_idle_secs {
            policy.idle_after = std::time::Duration::from_secs(*secs.get_ref());
        }
        if let Some(n) = &self.user_leaf_add_batch {
            policy.add_batch = *n.get_ref();
        }
        policy
    }
}

/// One entry of `legs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegConfig {
    /// `network.name` of a configured account.
    pub account: Spanned<String>,
    /// The room's native name.
    pub room: Spanned<String>,
}

/// A configuration error, located.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub column: usize,
    /// The key (dotted path), if known.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// A suggestion.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, col)
}

/// The dotted table header (`irc.libera`, `portal`) in force at `offset`, if any.
fn table_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    before.lines().rev().find_map(|l| {
        let t = l.trim();
        let inner = t
            .strip_prefix("[[")
            .and_then(|r| r.split("]]").next())
            .or_else(|| t.strip_prefix('[').and_then(|r| r.split(']').next()))?;
        Some(inner.trim().to_owned())
    })
}

/// The key an error span points at: the span itself when it covers a key, or the key a value is assigned to
/// (`room` in `legs = [{ account = "a", room = 1 }]` gives `legs.room`).
fn key_at(text: &str, span: std::ops::Range<usize>) -> String {
    let covered = text.get(span.clone()).unwrap_or("").trim();
    let line_start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let before = text.get(line_start..span.start).unwrap_or("");
    let covers_key = text.get(span.end..).unwrap_or("").trim_start().starts_with('=');
    let key = if covers_key {
        covered.trim_matches('"')
    } else if let Some((lhs, _)) = before.rsplit_once('=') {
        lhs.trim_end().rsplit(['{', ',', '[', ' ']).next().unwrap_or("").trim_matches('"')
    } else if covered.starts_with('[') {
        // A whole table: the table name (added by the caller) is the key.
        return String::new();
    } else {
        covered.trim_matches('"')
    };
    let first = before.split('=').next().unwrap_or("").trim().trim_matches('"');
    if before.contains('=') && !first.is_empty() && first != key { format!("{first}.{key}") } else { key.to_owned() }
}

/// The closest of `candidates` to `word`, if reasonably close.
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Builds a located error from a byte span.
fn at(file: &Path, text: &str, span: std::ops::Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
    let (line, column) = if span.is_empty() && span.start == 0 { (0, 0) } else { line_col(text, span.start) };
    ConfigError { file: file.to_owned(), line, column, key: key.to_owned(), message: message.into(), hint: None }
}

/// Turns a toml/serde error into a located one with a hint for unknown keys.
fn from_toml(file: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let msg = e.message().trim().to_owned();
    // A span that covers a whole table (a missing field) starts at its header: the table is that header.
    let covers_table = text.get(span.clone()).is_some_and(|t| t.trim_start().starts_with('['));
    let table_end =
        if covers_table { text[span.start..].find('\n').map_or(text.len(), |i| span.start + i) } else { span.start };
    let table = table_at(text, table_end).unwrap_or_default();
    let mut key = key_at(text, span.clone());
    if key.contains('\n') || key.len() > 64 {
        key.clear();
    }
    if let Some(missing) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        key = if key.is_empty() { missing.to_owned() } else { format!("{key}.{missing}") };
    }
    let full_key = match (table.is_empty(), key.is_empty()) {
        (false, false) => format!("{table}.{key}"),
        (false, true) => table.clone(),
        (true, _) => key.clone(),
    };
    let mut err = at(file, text, span, &full_key, msg.clone());
    if let Some((bad, expected)) = serde_unknown(&msg, "unknown field `") {
        err.hint = closest(bad, expected.iter().copied())
            .map(|c| format!("did you mean `{c}`?"))
            .or_else(|| (!expected.is_empty()).then(|| format!("valid keys: {}", expected.join(", "))));
    }
    if let Some((bad, expected)) = serde_unknown(&msg, "unknown variant `") {
        err.hint = closest(bad, expected.iter().copied()).map(|c| format!("did you mean `{c}`?"));
    }
    err
}

/// Splits serde's "unknown field `nik`, expected one of `server`, `nick`" (or "… expected `a` or `b`") into the
/// unknown name and the expected ones, if `msg` starts with `prefix` (e.g. "unknown field `").
fn serde_unknown<'m>(msg: &'m str, prefix: &str) -> Option<(&'m str, Vec<&'m str>)> {
    let rest = msg.strip_prefix(prefix)?;
    let bad = rest.split('`').next().unwrap_or("");
    let expected = rest.split("expected").nth(1).unwrap_or("").split('`').skip(1).step_by(2).collect();
    Some((bad, expected))
}

/// The table's shape for validation without reading secrets: each `KEY_file` of a secret key becomes `KEY`.
fn secret_placeholders(table: &toml::Table, secret_keys: &[&str]) -> toml::Table {
    let mut t = table.clone();
    for k in secret_keys {
        if t.remove(&format!("{k}_file")).is_some() && !t.contains_key(*k) {
            t.insert((*k).to_owned(), toml::Value::String("(secret)".into()));
        }
    }
    t
}

/// Locates a connector's complaint about its account table: an unknown or bad key is looked up in the table's
/// text, so the error names its line like every other config error.
fn account_error(
    file: &Path,
    text: &str,
    span: std::ops::Range<usize>,
    table: &str,
    e: bridge_api::ConnectorError,
) -> ConfigError {
    let reason = match e {
        bridge_api::ConnectorError::Config { reason, .. } => reason,
        other => other.to_string(),
    };
    // The table's keys run from its header to the next header (toml's span of a table may cover only the header).
    let body = {
        let from = text.get(span.start..).unwrap_or("");
        let mut end = 0;
        for (i, line) in from.split_inclusive('\n').enumerate() {
            if i > 0 && line.trim_start().starts_with('[') {
                break;
            }
            end += line.len();
        }
        &from[..end]
    };
    // serde names the field in backquotes: "unknown field `nik`, expected one of `server`, …".
    let field = reason.split('`').nth(1).filter(|f| !f.is_empty()).map(str::to_owned);
    let mut err = at(file, text, span.clone(), table, reason.clone());
    if let Some(f) = &field {
        let mut offset = 0;
        for line in body.split_inclusive('\n') {
            let key = line.trim_start().split(['=', ' ']).next().unwrap_or("");
            if key == f {
                let (l, c) = line_col(text, span.start + offset + (line.len() - line.trim_start().len()));
                (err.line, err.column) = (l, c);
                err.key = format!("{table}.{f}");
                break;
            }
            offset += line.len();
        }
        if let Some((bad, expected)) = serde_unknown(&reason, "unknown field `") {
            err.hint = closest(bad, expected.iter().copied()).map(|c| format!("did you mean `{c}`?"));
        }
    }
    err
}

/// The networks this build has connectors for.
pub const BUILT_NETWORKS: &[&str] = &["irc", "matrix", "xmpp"];

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
            hint: (e.kind() == std::io::ErrorKind::NotFound)
                .then(|| "pass --config FILE; config.example.toml is a documented starting point".to_owned()),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` (read from `path`, used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| from_toml(path, text, e))?;
        cfg.validate(path, text)?;
        cfg.source = Source { path: path.to_owned(), text: text.to_owned() };
        cfg.admin_token()?;
        cfg.postgres()?;
        Ok(cfg)
    }

    /// The config file's path.
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    fn error_at(&self, span: std::ops::Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        at(&self.source.path, &self.source.text, span, key, message)
    }

    /// How long a message for the hub of a room hosted elsewhere is retried: `bridge.hub_give_up_secs`, by
    /// default a day — or half of `retention.failed_days` if that is shorter, since the message's mark is pruned
    /// then (in a daemon that has run for a day: after a longer stop, the mark is kept for a day after the start).
    pub fn hub_give_up(&self) -> std::time::Duration {
        let secs = match &self.bridge.hub_give_up_secs {
            Some(s) => *s.get_ref(),
            None => match *self.retention.failed_days.get_ref() {
                0 => DEFAULT_HUB_GIVE_UP_SECS,
                days => DEFAULT_HUB_GIVE_UP_SECS.min(days.saturating_mul(86_400) / 2),
            },
        };
        std::time::Duration::from_secs(secs)
    }

    /// The configured admin token (`admin.token_file` or `admin.token = "env:NAME"`), read now; `None` if neither
    /// is set (the daemon then writes a fresh token to `DATA_DIR/admin.token` at every start).
    pub fn admin_token(&self) -> Result<Option<Secret>, ConfigError> {
        match (&self.admin.token_file, &self.admin.token) {
            (Some(_), Some(t)) => {
                Err(self.error_at(t.span(), "admin.token", "set either admin.token or admin.token_file, not both"))
            }
            (Some(f), None) => secrets::from_file(f.get_ref())
                .map(Some)
                .map_err(|e| self.error_at(f.span(), "admin.token_file", e.to_string())),
            (None, Some(t)) => match secrets::from_env_ref(t.get_ref()) {
                Some(r) => r.map(Some).map_err(|e| self.error_at(t.span(), "admin.token", e.to_string())),
                None => Err(self
                    .error_at(t.span(), "admin.token", "a literal token in the config file is refused")
                    .with_hint("use admin.token_file = \"/path\" (mode 0600) or admin.token = \"env:NAME\"")),
            },
            (None, None) => Ok(None),
        }
    }

    /// How to reach the PostgreSQL store, for `store = "postgres"` (`None` otherwise): the connection string read
    /// now from `bridge.postgres_url_file` or `bridge.postgres_url = "env:NAME"`.
    pub fn postgres(&self) -> Result<Option<mimi_store::PostgresConfig>, ConfigError> {
        if self.bridge.store != Backend::Postgres {
            return Ok(None);
        }
        let url = match (&self.bridge.postgres_url_file, &self.bridge.postgres_url) {
            (Some(_), Some(u)) => {
                return Err(self.error_at(
                    u.span(),
                    "bridge.postgres_url",
                    "set either bridge.postgres_url or bridge.postgres_url_file, not both",
                ));
            }
            (Some(f), None) => secrets::from_file(f.get_ref())
                .map_err(|e| self.error_at(f.span(), "bridge.postgres_url_file", e.to_string()))?,
            (None, Some(u)) => match secrets::from_env_ref(u.get_ref()) {
                Some(r) => r.map_err(|e| self.error_at(u.span(), "bridge.postgres_url", e.to_string()))?,
                None => {
                    return Err(self
                        .error_at(
                            u.span(),
                            "bridge.postgres_url",
                            "a literal connection string in the config file is refused",
                        )
                        .with_hint("use postgres_url_file = \"/path\" (mode 0600) or postgres_url = \"env:NAME\""));
                }
            },
            (None, None) => {
                return Err(self
                    .error_at(0..0, "bridge.store", "store = \"postgres\" needs a connection string")
                    .with_hint(
                        "set bridge.postgres_url_file = \"/path\" (mode 0600) or bridge.postgres_url = \"env:NAME\"",
                    ));
            }
        };
        let mut pg = mimi_store::PostgresConfig::new(url.expose());
        pg.ca_file = self.bridge.postgres_ca_file.clone();
        pg.lease = std::time::Duration::from_secs(*self.bridge.postgres_lease_secs.get_ref());
        pg.wait_for_lease = self.bridge.postgres_standby;
        Ok(Some(pg))
    }

    /// The native-client registration token, for `registration = "token"` (`None` otherwise).
    pub fn registration_token(&self) -> Result<Option<Secret>, ConfigError> {
        if self.mimi.registration != Registration::Token {
            return Ok(None);
        }
        match (&self.mimi.registration_token_file, &self.mimi.registration_token) {
            (Some(_), Some(t)) => Err(self.error_at(
                t.span(),
                "mimi.registration_token",
                "set either mimi.registration_token or mimi.registration_token_file, not both",
            )),
            (Some(f), None) => secrets::from_file(f.get_ref())
                .map(Some)
                .map_err(|e| self.error_at(f.span(), "mimi.registration_token_file", e.to_string())),
            (None, Some(t)) => match secrets::from_env_ref(t.get_ref()) {
                Some(r) => r.map(Some).map_err(|e| self.error_at(t.span(), "mimi.registration_token", e.to_string())),
                None => Err(self
                    .error_at(t.span(), "mimi.registration_token", "a literal token in the config file is refused")
                    .with_hint("use registration_token_file = \"/path\" (mode 0600) or \"env:NAME\"")),
            },
            (None, None) => Err(self.error_at(
                0..0,
                "mimi.registration",
                "registration = \"token\" needs mimi.registration_token_file or mimi.registration_token",
            )),
        }
    }

    /// Every configured account with its table, secrets resolved (`KEY_file`, `"env:NAME"`; see
    /// [`crate::secrets`]). Called when the accounts are about to start, and by `check-config`.
    pub fn resolved_accounts(&self) -> Result<Vec<(AccountId, toml::Table)>, ConfigError> {
        let mut out = Vec::new();
        for (network, tables) in [("irc", &self.irc), ("matrix", &self.matrix), ("xmpp", &self.xmpp)] {
            for (name, t) in tables {
                let key = format!("{network}.{name}");
                let id = AccountId::new(network, name).map_err(|e| self.error_at(t.span(), &key, e.to_string()))?;
                let mut table = t.get_ref().clone();
                let keys = crate::networks::built_in()
                    .into_iter()
                    .find(|n| n.name() == network)
                    .map(|n| n.secret_keys())
                    .unwrap_or(&[]);
                secrets::resolve_table(&mut table, keys)
                    .map_err(|e| self.error_at(t.span(), &format!("{key}.{}", e.key), e.message))?;
                out.push((id, table));
            }
        }
        Ok(out)
    }

    /// Every configured account id with the span of its table.
    pub fn accounts(&self) -> Vec<(AccountId, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        for (network, tables) in [("irc", &self.irc), ("matrix", &self.matrix), ("xmpp", &self.xmpp)] {
            for (name, t) in tables {
                if let Ok(id) = AccountId::new(network, name) {
                    out.push((id, t.span()));
                }
            }
        }
        out
    }

    /// `[[portal]] room`: a room of a configured peer, joined with the shared leaf.
    fn validate_remote_room(
        &self,
        file: &Path,
        text: &str,
        p: &PortalConfig,
        room: &Spanned<String>,
    ) -> Result<(), ConfigError> {
        let err = |message: String| at(file, text, room.span(), "portal.room", message);
        let uri = room.get_ref();
        let Some((domain, name)) = uri.strip_prefix("mimi://").and_then(|r| r.split_once("/r/")) else {
            return Err(
                err(format!("{uri:?} is not a MIMI room URI")).with_hint("e.g. \"mimi://other.example/r/lobby\"")
            );
        };
        if domain.is_empty() || name.is_empty() || name.contains('/') || uri.len() > 512 {
            return Err(err(format!("{uri:?} is not a MIMI room URI (mimi://DOMAIN/r/NAME, at most 512 bytes)")));
        }
        if domain == self.bridge.domain.get_ref() {
            return Err(err(format!("{uri:?} is a room of this bridge's own domain"))
                .with_hint("leave `room` out: the portal hosts mimi://DOMAIN/r/NAME itself"));
        }
        if !self.mimi.peer.iter().any(|peer| peer.domain == domain) {
            return Err(err(format!("{domain} is not a configured peer"))
                .with_hint(&format!("add a [[mimi.peer]] with domain = \"{domain}\"")));
        }
        if !p.join.span().is_empty() {
            return Err(at(
                file,
                text,
                p.join.span(),
                "portal.join",
                "the hub of a room hosted elsewhere decides who joins",
            )
            .with_hint("remove join (the room must be open to the bridge)"));
        }
        if *p.mls_identity.get_ref() != MlsIdentity::Shared {
            return Err(at(
                file,
                text,
                p.mls_identity.span(),
                "portal.mls_identity",
                "a portal of a room hosted elsewhere speaks from the shared leaf only",
            )
            .with_hint("remove mls_identity, or host the room here (no `room`)"));
        }
        Ok(())
    }

    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let domain = self.bridge.domain.get_ref();
        let valid_domain = !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !l.starts_with('-')
            });
        if !valid_domain {
            return Err(at(file, text, self.bridge.domain.span(), "bridge.domain", "not a valid DNS domain name"));
        }
        if *self.bridge.queue_depth.get_ref() == 0 {
            return Err(at(file, text, self.bridge.queue_depth.span(), "bridge.queue_depth", "must be at least 1"));
        }
        let timeout = *self.bridge.shutdown_timeout.get_ref();
        if !(1..=3600).contains(&timeout) {
            return Err(at(
                file,
                text,
                self.bridge.shutdown_timeout.span(),
                "bridge.shutdown_timeout",
                "must be between 1 and 3600 seconds",
            ));
        }
        let lease = *self.bridge.postgres_lease_secs.get_ref();
        if !(2..=300).contains(&lease) {
            return Err(at(
                file,
                text,
                self.bridge.postgres_lease_secs.span(),
                "bridge.postgres_lease_secs",
                "must be between 2 and 300 seconds",
            ));
        }
        let key_update = *self.bridge.mls_key_update_secs.get_ref();
        if (1..60).contains(&key_update) {
            return Err(at(
                file,
                text,
                self.bridge.mls_key_update_secs.span(),
                "bridge.mls_key_update_secs",
                "must be 0 (never) or at least 60 seconds: every update is a commit every member processes",
            ));
        }
        if *self.bridge.portal_idle_close_secs.get_ref() > MAX_IDLE_CLOSE_SECS {
            let span = self.bridge.portal_idle_close_secs.span();
            let why = format!("must be at most {MAX_IDLE_CLOSE_SECS} seconds (30 days); 0: never");
            return Err(at(file, text, span, "bridge.portal_idle_close_secs", why));
        }
        for (value, key) in [
            (Some(&self.bridge.delivery_give_up_secs), "bridge.delivery_give_up_secs"),
            (self.bridge.hub_give_up_secs.as_ref(), "bridge.hub_give_up_secs"),
        ] {
            if let Some(value) = value
                && !(MIN_GIVE_UP_SECS..=MAX_GIVE_UP_SECS).contains(value.get_ref())
            {
                let why = format!("must be between {MIN_GIVE_UP_SECS} and {MAX_GIVE_UP_SECS} seconds (30 days)");
                return Err(at(file, text, value.span(), key, why));
            }
        }
        // A message waiting for the hub is known by its mark, which the failed-deliveries retention prunes.
        let failed_days = *self.retention.failed_days.get_ref();
        if let Some(hub) = &self.bridge.hub_give_up_secs
            && failed_days > 0
            && *hub.get_ref() >= failed_days.saturating_mul(86_400)
        {
            let days = if failed_days == 1 { "1 day".to_owned() } else { format!("{failed_days} days") };
            let why = format!(
                "must be shorter than retention.failed_days ({days}), which prunes the mark of a message waiting for \
                 the hub (a day after the start at the earliest): a message whose mark goes first is dropped without \
                 its sender being told"
            );
            return Err(at(file, text, hub.span(), "bridge.hub_give_up_secs", why));
        }
        if *self.quota.user_messages_per_minute.get_ref() == 0 {
            let span = self.quota.user_messages_per_minute.span();
            return Err(at(file, text, span, "quota.user_messages_per_minute", "must be at least 1"));
        }
        // A user must be able to send at least one message of the largest size the listener takes.
        if *self.quota.user_bytes_per_minute.get_ref() < crate::mimi_http::MAX_BODY as u64 {
            let span = self.quota.user_bytes_per_minute.span();
            let why =
                format!("must be at least {} (the largest message the listener takes)", crate::mimi_http::MAX_BODY);
            return Err(at(file, text, span, "quota.user_bytes_per_minute", why));
        }
        self.retention.validate(file, text)?;
        self.media.validate(file, text)?;
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(self.log.level.get_ref()) {
            return Err(at(file, text, self.log.level.span(), "log.level", format!("not a log filter: {e}"))
                .with_hint("e.g. \"info\" or \"info,bridge_core=debug\""));
        }
        let mut accounts = BTreeSet::new();
        for (network, tables) in [("irc", &self.irc), ("matrix", &self.matrix), ("xmpp", &self.xmpp)] {
            for (name, t) in tables {
                let key = format!("{network}.{name}");
                let id = AccountId::new(network, name).map_err(|e| at(file, text, t.span(), &key, e.to_string()))?;
                if !BUILT_NETWORKS.contains(&network) {
                    return Err(at(
                        file,
                        text,
                        t.span(),
                        &key,
                        format!("this build of mimi-bridge has no {network} connector yet"),
                    ));
                }
                if let Some(n) = crate::networks::built_in().into_iter().find(|n| n.name() == network)
                    && let Err(e) = n.validate(&id, &secret_placeholders(t.get_ref(), n.secret_keys()))
                {
                    return Err(account_error(file, text, t.span(), &key, e));
                }
                accounts.insert(id);
            }
        }
        let mut names = BTreeSet::new();
        let mut rooms = BTreeMap::new();
        let mut remote_rooms = BTreeMap::new();
        for p in &self.portal {
            let id = PortalId::new(p.name.get_ref().clone())
                .map_err(|e| at(file, text, p.name.span(), "portal.name", e.to_string()))?;
            if !names.insert(id.clone()) {
                return Err(at(file, text, p.name.span(), "portal.name", format!("portal {id:?} is defined twice")));
            }
            let leaf_keys = [
                ("max_user_leaves", p.max_user_leaves.as_ref().map(|v| (v.span(), *v.get_ref() as u64))),
                ("user_leaf_idle_secs", p.user_leaf_idle_secs.as_ref().map(|v| (v.span(), *v.get_ref()))),
                ("user_leaf_add_batch", p.user_leaf_add_batch.as_ref().map(|v| (v.span(), *v.get_ref() as u64))),
            ];
            for (key, value) in leaf_keys {
                let Some((span, value)) = value else { continue };
                let key = format!("portal.{key}");
                if *p.mls_identity.get_ref() != MlsIdentity::PerUser {
                    return Err(at(file, text, span, &key, "only applies with mls_identity = \"per-user\"")
                        .with_hint("remove it, or set mls_identity = \"per-user\""));
                }
                if value == 0 {
                    return Err(at(file, text, span, &key, "must be at least 1"));
                }
            }
            if let Some(room) = &p.room {
                self.validate_remote_room(file, text, p, room)?;
                if let Some(other) = remote_rooms.insert(room.get_ref().clone(), id.clone()) {
                    let why = format!("{} is already the room of portal \"{other}\"", room.get_ref());
                    return Err(at(file, text, room.span(), "portal.room", why));
                }
            }
            for leg in &p.legs {
                let acct = AccountId::parse(leg.account.get_ref())
                    .map_err(|e| at(file, text, leg.account.span(), "portal.legs.account", e.to_string()))?;
                if !accounts.contains(&acct) {
                    let mut e = at(
                        file,
                        text,
                        leg.account.span(),
                        "portal.legs.account",
                        format!("no account [{acct}] is configured"),
                    );
                    let known: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
                    e.hint = closest(&acct.to_string(), known.iter().map(String::as_str))
                        .map(|c| format!("did you mean `{c}`?"));
                    return Err(e);
                }
                let room = leg.room.get_ref();
                if room.is_empty() || room.len() > 512 {
                    return Err(at(file, text, leg.room.span(), "portal.legs.room", "room must be 1–512 bytes"));
                }
                if let Some(other) = rooms.insert((acct.clone(), room.clone()), id.clone()) {
                    return Err(at(
                        file,
                        text,
                        leg.room.span(),
                        "portal.legs.room",
                        format!("{acct} {room} is already linked to portal {other:?}"),
                    ));
                }
            }
        }
        for peer in &self.mimi.peer {
            let url = peer.url.get_ref();
            if !(url.starts_with("https://") || url.starts_with("http://")) || peer.domain.is_empty() {
                return Err(at(
                    file,
                    text,
                    peer.url.span(),
                    "mimi.peer.url",
                    format!("peer {:?} needs a domain and an http(s):// url, got {url:?}", peer.domain),
                ));
            }
        }
        for (key, path) in [
            ("mimi.trust_anchors", &self.mimi.trust_anchors),
            ("mimi.tls_cert", &self.mimi.tls_cert),
            ("mimi.tls_key", &self.mimi.tls_key),
        ] {
            if let Some(p) = path
                && !p.get_ref().exists()
            {
                return Err(at(file, text, p.span(), key, format!("{} does not exist", p.get_ref().display())));
            }
        }
        if let Some(k) = &self.mimi.tls_key
            && let Err(e) = secrets::check_not_world_accessible(k.get_ref())
        {
            return Err(at(file, text, k.span(), "mimi.tls_key", e.to_string()));
        }
        match (&self.mimi.tls_cert, &self.mimi.tls_key) {
            (Some(c), None) => {
                return Err(at(file, text, c.span(), "mimi.tls_cert", "needs mimi.tls_key (they go together)"));
            }
            (None, Some(k)) => {
                return Err(at(file, text, k.span(), "mimi.tls_key", "needs mimi.tls_cert (they go together)"));
            }
            (Some(c), Some(k)) => {
                let anchors = self.mimi.trust_anchors.as_ref();
                if let Err(e) =
                    crate::mimi_tls::MimiTls::load(c.get_ref(), k.get_ref(), anchors.map(|a| a.get_ref().as_path()))
                {
                    let (key, span) = match e.split_once(' ') {
                        Some(("mimi.tls_key", _)) => ("mimi.tls_key", k.span()),
                        Some(("mimi.trust_anchors", _)) => {
                            ("mimi.trust_anchors", anchors.map_or(c.span(), |a| a.span()))
                        }
                        _ => ("mimi.tls_cert", c.span()),
                    };
                    return Err(at(file, text, span, key, e));
                }
            }
            (None, None) => {}
        }
        let tls = self.mimi.tls_cert.is_some();
        for peer in &self.mimi.peer {
            let scheme = if tls { "https://" } else { "http://" };
            if !peer.url.get_ref().starts_with(scheme) {
                let why = if tls {
                    "with TLS configured, peers are reached over https:// (mutual TLS)"
                } else {
                    "without mimi.tls_cert, peers are reached over plain http:// (loopback development mode)"
                };
                return Err(at(file, text, peer.url.span(), "mimi.peer.url", why));
            }
        }
        self.check_mimi_listen(file, text)?;
        self.check_mimi_limits(file, text)?;
        let admin = self.admin.listen.get_ref();
        if !admin.ip().is_loopback() && self.admin.token_file.is_none() && self.admin.token.is_none() {
            return Err(at(
                file,
                text,
                self.admin.listen.span(),
                "admin.listen",
                format!("{admin} is not a loopback address and no admin.token_file is set"),
            )
            .with_hint("set admin.token_file, or listen on 127.0.0.1"));
        }
        Ok(())
    }
}

impl Config {
    /// `mimi.max_connections`, `…_per_ip`, `…_timeout_secs`: within sane ranges.
    fn check_mimi_limits(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let m = &self.mimi;
        let max = *m.max_connections.get_ref();
        if !(1..=1_000_000).contains(&max) {
            return Err(at(
                file,
                text,
                m.max_connections.span(),
                "mimi.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        let per_ip = *m.max_connections_per_ip.get_ref();
        if !(1..=max).contains(&per_ip) {
            return Err(at(
                file,
                text,
                m.max_connections_per_ip.span(),
                "mimi.max_connections_per_ip",
                format!("must be between 1 and mimi.max_connections ({max})"),
            ));
        }
        let checks = [
            ("mimi.header_timeout_secs", &m.header_timeout_secs, 300),
            ("mimi.idle_timeout_secs", &m.idle_timeout_secs, 3600),
        ];
        for (key, value, most) in checks {
            if !(1..=most).contains(value.get_ref()) {
                return Err(at(file, text, value.span(), key, format!("must be between 1 and {most} seconds")));
            }
        }
        Ok(())
    }

    /// `mimi.listen`: plain HTTP only on loopback.
    fn check_mimi_listen(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let listen = self.mimi.listen.get_ref();
        if !listen.ip().is_loopback() && (self.mimi.tls_cert.is_none() || self.mimi.tls_key.is_none()) {
            return Err(at(
                file,
                text,
                self.mimi.listen.span(),
                "mimi.listen",
                format!("{listen} is not a loopback address: plain HTTP is allowed only on loopback"),
            )
            .with_hint("set mimi.tls_cert and mimi.tls_key, or listen on 127.0.0.1"));
        }
        if !listen.ip().is_loopback() && self.mimi.registration == Registration::Open {
            return Err(at(
                file,
                text,
                self.mimi.listen.span(),
                "mimi.registration",
                format!("registration = \"open\" would let anyone who reaches {listen} register native users"),
            )
            .with_hint("set mimi.registration = \"token\" (with registration_token_file) or \"closed\""));
        }
        Ok(())
    }

    /// `mimi-bridge run --data-dir DIR --listen ADDR`: `data_dir` replaces `[bridge] data_dir`, `listen`
    /// replaces `[mimi] listen`, and the file's checks apply to them (an error names the option).
    pub fn with_overrides(
        mut self,
        data_dir: Option<PathBuf>,
        listen: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        if let Some(dir) = data_dir {
            self.bridge.data_dir = dir;
        }
        if let Some(addr) = listen {
            self.mimi.listen = Spanned::new(0..0, addr);
            self.check_mimi_listen(&self.source.path, "").map_err(|mut e| {
                e.message = format!("--listen {}", e.message);
                e
            })?;
        }
        Ok(self)
    }
}

impl ConfigError {
    fn with_hint(mut self, h: &str) -> Self {
        self.hint = Some(h.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), s)
    }

    const MIN: &str = "[bridge]\ndomain = \"bridge.example.org\"\ndata_dir = \"/tmp/x\"\n";

    #[test]
    fn a_portal_may_join_a_room_a_peer_hosts() {
        let text = format!(
            "{MIN}[[mimi.peer]]\ndomain = \"a.test\"\nurl = \"http://127.0.0.1:1\"\n\n[[portal]]\nname = \"club\"\n\
             room = \"mimi://a.test/r/club\"\n\n[[portal]]\nname = \"own\"\n"
        );
        let c = parse(&text).expect("valid");
        let (club, own) = (PortalId::new("club").expect("id"), PortalId::new("own").expect("id"));
        assert_eq!(c.portal[0].remote_room_of(&club), Some("mimi://a.test/r/club"));
        assert_eq!(c.portal[0].remote_room_of(&own), None, "another portal's table");
        assert_eq!(c.portal[1].remote_room_of(&own), None, "hosted here");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).expect("valid");
        assert_eq!(c.bridge.store, Backend::Redb);
        assert_eq!(c.mimi.listen.get_ref().port(), 8448);
        assert!(c.portal.is_empty());
    }

    /// The hub's give-up time: set, a day by default, and within a short failed-deliveries retention when unset
    /// (a config valid before the key existed stays valid).
    #[test]
    fn hub_give_up_defaults_within_the_retention_of_marks() {
        let secs = |extra: &str| parse(&format!("{MIN}{extra}")).expect("valid").hub_give_up().as_secs();
        assert_eq!(secs(""), 86_400);
        assert_eq!(secs("hub_give_up_secs = 600\n"), 600);
        assert_eq!(secs("[retention]\nfailed_days = 1\n"), 43_200);
        assert_eq!(secs("[retention]\nfailed_days = 0\n"), 86_400);
        let c = parse(&format!("{MIN}delivery_give_up_secs = 7200\n")).expect("valid");
        assert_eq!(*c.bridge.delivery_give_up_secs.get_ref(), 7200);
    }

    #[test]
    fn portals_close_when_idle_by_default() {
        let idle = |extra: &str| parse(&format!("{MIN}{extra}")).expect("valid").bridge.portal_idle_close();
        assert_eq!(idle(""), Some(std::time::Duration::from_secs(300)));
        assert_eq!(idle("portal_idle_close_secs = 30\n"), Some(std::time::Duration::from_secs(30)));
        assert_eq!(idle("portal_idle_close_secs = 0\n"), None);
    }

    #[test]
    fn open_portals_are_bounded_by_default() {
        let max = |extra: &str| parse(&format!("{MIN}{extra}")).expect("valid").bridge.max_open_portals();
        assert_eq!(max(""), Some(1000));
        assert_eq!(max("max_open_portals = 50\n"), Some(50));
        assert_eq!(max("max_open_portals = 0\n"), None);
    }

    #[test]
    fn off_loopback_needs_tls_and_closed_or_token_registration() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = harness::pki::Ca::new(dir.path(), "t");
        let id = ca.issue("me", &["bridge.example.org"], true, true);
        std::fs::set_permissions(&id.key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let tls = format!(
            "[mimi]\nlisten = \"0.0.0.0:8448\"\ntls_cert = {:?}\ntls_key = {:?}\ntrust_anchors = {:?}\n",
            id.cert.display().to_string(),
            id.key.display().to_string(),
            ca.cert.display().to_string()
        );
        let e = parse(&format!("{MIN}{tls}")).expect_err("open registration off loopback");
        assert_eq!(e.key, "mimi.registration", "{e}");
        assert!(e.message.contains("anyone"), "{e}");
        let c = parse(&format!("{MIN}{tls}registration = \"closed\"\n")).expect("TLS, closed registration");
        assert!(c.mimi.tls_cert.is_some());
    }

    #[test]
    fn per_user_portals_take_leaf_limits() {
        let c = parse(&format!(
            "{MIN}[[portal]]\nname = \"a\"\nmls_identity = \"per-user\"\nmax_user_leaves = 7\nuser_leaf_idle_secs = 90\n\
             user_leaf_add_batch = 1\n\
             [[portal]]\nname = \"b\"\nmls_identity = \"per-user\"\n"
        ))
        .expect("valid");
        let (a, b) = (c.portal[0].leaf_policy(), c.portal[1].leaf_policy());
        assert_eq!((a.max_leaves, a.idle_after.as_secs(), a.add_batch), (7, 90, 1));
        assert_eq!((b.max_leaves, b.idle_after.as_secs(), b.add_batch), (100, 3600, 32), "defaults");
    }

    #[test]
    fn unknown_key_names_file_line_key_and_suggestion() {
        let e = parse(&format!("{MIN}data_dri = \"/x\"\n")).expect_err("unknown key");
        assert_eq!((e.line, e.column), (4, 1), "{e}");
        assert_eq!(e.key, "bridge.data_dri");
        assert_eq!(e.hint.as_deref(), Some("did you mean `data_dir`?"), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("test.toml:4:1: key `bridge.data_dri`: unknown field"), "{shown}");
    }

    #[test]
    fn the_postgres_connection_string_comes_from_a_file_or_the_environment() {
        use std::os::unix::fs::PermissionsExt as _;
        let pg = |extra: &str| parse(&format!("{MIN}store = \"postgres\"\n{extra}"));
        let e = pg("").expect_err("no connection string");
        assert_eq!(e.key, "bridge.store", "{e}");
        assert!(e.hint.as_deref().is_some_and(|h| h.contains("postgres_url_file")), "{e}");
        let e = pg("postgres_url = \"postgresql://u:pw@db/mimi\"\n").expect_err("a literal");
        assert_eq!((e.line, e.key.as_str()), (5, "bridge.postgres_url"), "{e}");
        assert!(!e.to_string().contains("pw@"), "the error repeats the secret: {e}");
        let e = pg("postgres_url = \"env:MIMI_TEST_UNSET_PG_URL\"\n").expect_err("unset variable");
        assert!(e.message.contains("MIMI_TEST_UNSET_PG_URL"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pg-url");
        std::fs::write(&file, "postgresql://u:pw@db/mimi\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let line = format!("postgres_url_file = {:?}\n", file.display().to_string());
        let e = pg(&line).expect_err("a file others can read");
        assert_eq!(e.key, "bridge.postgres_url_file", "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = pg(&format!("{line}postgres_standby = true\npostgres_lease_secs = 3\n")).expect("valid");
        let p = c.postgres().expect("resolves").expect("postgres");
        assert_eq!(p.url, "postgresql://u:pw@db/mimi");
        assert!(p.wait_for_lease);
        assert_eq!(p.lease, std::time::Duration::from_secs(3));
        let e = pg(&format!("{line}postgres_lease_secs = 1\n")).expect_err("too short a lease");
        assert_eq!(e.key, "bridge.postgres_lease_secs", "{e}");
        assert!(parse(MIN).expect("valid").postgres().expect("no postgres").is_none());
    }

    #[test]
    fn bad_enum_value_gets_a_hint() {
        let e = parse(&format!("{MIN}store = \"sledd\"\n")).expect_err("bad backend");
        assert_eq!(e.line, 4);
        assert_eq!(e.hint.as_deref(), Some("did you mean `sled`?"), "{e}");
    }

    #[test]
    fn legs_must_name_configured_accounts() {
        let e = parse(&format!(
            "{MIN}[[portal]]\nname = \"rust\"\nlegs = [{{ account = \"irc.libera\", room = \"#rust\" }}]\n"
        ))
        .expect_err("no such account");
        assert_eq!(e.line, 6);
        assert_eq!(e.key, "portal.legs.account");
        assert!(e.message.contains("no account [irc.libera]"), "{e}");
    }

    #[test]
    fn portal_names_and_plain_http_are_checked() {
        let e = parse(&format!("{MIN}[[portal]]\nname = \"Bad Name\"\n")).expect_err("bad name");
        assert_eq!((e.line, e.key.as_str()), (5, "portal.name"));
        let e = parse(&format!("{MIN}[[portal]]\nname = \"a\"\n[[portal]]\nname = \"a\"\n")).expect_err("twice");
        assert_eq!(e.line, 7);
        let e = parse(&format!("{MIN}[mimi]\nlisten = \"0.0.0.0:8448\"\n")).expect_err("plain off loopback");
        assert_eq!((e.line, e.key.as_str()), (5, "mimi.listen"));
        let e = parse("[bridge]\ndomain = \"bad domain\"\ndata_dir = \"/x\"\n").expect_err("domain");
        assert_eq!((e.line, e.key.as_str()), (2, "bridge.domain"));
    }

    #[test]
    fn run_overrides_replace_data_dir_and_listen_and_are_checked() {
        let addr: SocketAddr = "127.0.0.2:9000".parse().expect("addr");
        let c = parse(MIN).expect("valid").with_overrides(Some("/srv/two".into()), Some(addr)).expect("overrides");
        assert_eq!((c.bridge.data_dir.as_path(), *c.mimi.listen.get_ref()), (Path::new("/srv/two"), addr));
        let c = parse(MIN).expect("valid").with_overrides(None, None).expect("no overrides");
        assert_eq!((c.bridge.data_dir.as_path(), c.mimi.listen.get_ref().port()), (Path::new("/tmp/x"), 8448));
        let off = "0.0.0.0:8448".parse().ok();
        let e = parse(MIN).expect("valid").with_overrides(None, off).expect_err("plain HTTP off loopback");
        assert_eq!(
            e.to_string(),
            "test.toml: key `mimi.listen`: --listen 0.0.0.0:8448 is not a loopback address: plain HTTP is allowed \
             only on loopback (set mimi.tls_cert and mimi.tls_key, or listen on 127.0.0.1)"
        );
    }

    #[test]
    fn xmpp_tables_are_checked_by_the_connector_with_the_key_named() {
        let ok = "[xmpp.lobby]\nmode = \"client\"\nserver = \"xmpp.example.org:5222\"\njid = \"bridge@example.org\"\n\
                  password = \"env:XMPP_PW\"\n";
        parse(&format!("{MIN}{ok}")).expect("a client-mode table is accepted");
        let e = parse(&format!("{MIN}[xmpp.lobby]\nmode = \"client\"\nserver = \"x:5222\"\nnik = \"b\"\n"))
            .expect_err("typo");
        assert_eq!((e.key.as_str(), e.line), ("xmpp.lobby.nik", 7), "{e}");
        let component = "[xmpp.lobby]\nmode = \"component\"\nserver = \"127.0.0.1:5347\"\ndomain = \"mimi.example.org\"\n\
                         secret = \"env:XMPP_SECRET\"\n";
        parse(&format!("{MIN}{component}")).expect("a component-mode table is accepted");
        let e = parse(&format!("{MIN}[xmpp.lobby]\nmode = \"component\"\nserver = \"x:5347\"\nsecret = \"s\"\n"))
            .expect_err("no domain");
        assert!(e.message.contains("needs `domain`"), "{e}");
        let e = parse(&format!("{MIN}[xmpp.lobby]\nmode = \"client\"\nserver = \"x:5222\"\n")).expect_err("no jid");
        assert!(e.message.contains("needs `jid`"), "{e}");
        let e = parse(&format!("{MIN}[xmpp.lobby]\nmode = \"ghost\"\nserver = \"x:5222\"\n")).expect_err("bad mode");
        // Like every enum value of an account table, the error names the table (serde does not name the field).
        assert!(e.key == "xmpp.lobby" && e.line == 4 && e.message.contains("unknown variant `ghost`"), "{e}");
    }

    /// One malformed config: the text, and the line, key and message fragment its error must carry.
    struct Case {
        name: &'static str,
        text: String,
        line: usize,
        key: &'static str,
        message: &'static str,
        hint: Option<&'static str>,
    }

    fn case(name: &'static str, text: String, line: usize, key: &'static str, message: &'static str) -> Case {
        Case { name, text, line, key, message, hint: None }
    }

    fn cases(dir: &Path) -> Vec<Case> {
        use std::os::unix::fs::PermissionsExt;
        let open_token = dir.join("open.token");
        std::fs::write(&open_token, "t0ken\n").expect("write");
        std::fs::set_permissions(&open_token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let private_key = dir.join("private.key");
        std::fs::write(&private_key, "not PEM").expect("write");
        std::fs::set_permissions(&private_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let open_key = dir.join("open.key");
        std::fs::write(&open_key, "key").expect("write");
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let missing = dir.join("missing.token");
        let leg = |legs: &str| format!("{MIN}[[portal]]\nname = \"rust\"\nlegs = [{legs}]\n");
        // Portal `a` with `keys`, beside the peer a.test: its keys from line 10.
        let remote = |keys: &str| {
            format!(
                "{MIN}[[mimi.peer]]\ndomain = \"a.test\"\nurl = \"http://127.0.0.1:1\"\n\n[[portal]]\nname = \"a\"\n{keys}\n"
            )
        };
        vec![
            Case {
                hint: Some("did you mean `data_dir`?"),
                ..case(
                    "misspelt key",
                    format!("{MIN}data_dri = \"/x\"\n"),
                    4,
                    "bridge.data_dri",
                    "unknown field `data_dri`",
                )
            },
            Case {
                hint: Some("did you mean `bridge`?"),
                ..case("misspelt table", format!("{MIN}[brige]\nx = 1\n"), 4, "brige", "unknown field `brige`")
            },
            Case {
                hint: Some("did you mean `sled`?"),
                ..case(
                    "bad enum value",
                    format!("{MIN}store = \"sledd\"\n"),
                    4,
                    "bridge.store",
                    "unknown variant `sledd`",
                )
            },
            case(
                "wrong type",
                format!("{MIN}queue_depth = \"big\"\n"),
                4,
                "bridge.queue_depth",
                "invalid type: string \"big\"",
            ),
            case(
                "missing required key",
                "[bridge]\ndomain = \"a.example\"\n".into(),
                1,
                "bridge.data_dir",
                "missing field `data_dir`",
            ),
            case(
                "bad domain",
                "[bridge]\ndomain = \"bad domain\"\ndata_dir = \"/x\"\n".into(),
                2,
                "bridge.domain",
                "not a valid DNS domain",
            ),
            case("zero queue depth", format!("{MIN}queue_depth = 0\n"), 4, "bridge.queue_depth", "at least 1"),
            case(
                "shutdown timeout out of range",
                format!("{MIN}shutdown_timeout = 0\n"),
                4,
                "bridge.shutdown_timeout",
                "between 1 and 3600",
            ),
            case(
                "key updates too often",
                format!("{MIN}mls_key_update_secs = 5\n"),
                4,
                "bridge.mls_key_update_secs",
                "at least 60 seconds",
            ),
            case(
                "portals kept open too long",
                format!("{MIN}portal_idle_close_secs = 2592001\n"),
                4,
                "bridge.portal_idle_close_secs",
                "at most 2592000 seconds",
            ),
            case(
                "deliveries given up too soon",
                format!("{MIN}delivery_give_up_secs = 10\n"),
                4,
                "bridge.delivery_give_up_secs",
                "between 60 and 2592000 seconds",
            ),
            case(
                "hub messages tried for too long",
                format!("{MIN}hub_give_up_secs = 2592001\n"),
                4,
                "bridge.hub_give_up_secs",
                "between 60 and 2592000 seconds",
            ),
            case(
                "hub messages tried for longer than their marks are kept",
                format!("{MIN}hub_give_up_secs = 86400\n[retention]\nfailed_days = 1\n"),
                4,
                "bridge.hub_give_up_secs",
                "shorter than retention.failed_days (1 day)",
            ),
            case(
                "zero message quota",
                format!("{MIN}[quota]\nuser_messages_per_minute = 0\n"),
                5,
                "quota.user_messages_per_minute",
                "at least 1",
            ),
            case(
                "byte quota below one message",
                format!("{MIN}[quota]\nuser_bytes_per_minute = 1000\n"),
                5,
                "quota.user_bytes_per_minute",
                "at least 1048576",
            ),
            case(
                "media file limit above the quota",
                format!("{MIN}[media]\nmax_bytes = 2000\nquota_bytes = 1000\n"),
                5,
                "media.max_bytes",
                "between 1 and media.quota_bytes (1000)",
            ),
            case(
                "retention interval too short",
                format!("{MIN}[retention]\ninterval_secs = 5\n"),
                5,
                "retention.interval_secs",
                "between 60 and 86400",
            ),
            case(
                "retention beyond a century",
                format!("{MIN}[retention]\nmessages_days = 100000\n"),
                5,
                "retention.messages_days",
                "0 (forever) to 36500",
            ),
            case(
                "bad join policy",
                format!("{MIN}[[portal]]\nname = \"a\"\njoin = \"closed\"\n"),
                6,
                "portal.join",
                "closed",
            ),
            case("bad portal name", format!("{MIN}[[portal]]\nname = \"Bad Name\"\n"), 5, "portal.name", "portal name"),
            case(
                "portal twice",
                format!("{MIN}[[portal]]\nname = \"a\"\n[[portal]]\nname = \"a\"\n"),
                7,
                "portal.name",
                "defined twice",
            ),
            Case {
                hint: Some("did you mean `name`?"),
                ..case(
                    "misspelt portal key",
                    format!("{MIN}[[portal]]\nnmae = \"a\"\n"),
                    5,
                    "portal.nmae",
                    "unknown field `nmae`",
                )
            },
            Case {
                hint: Some("did you mean `account`?"),
                ..case(
                    "misspelt leg key",
                    leg("{ acount = \"irc.x\", room = \"#r\" }"),
                    6,
                    "portal.legs.acount",
                    "unknown field `acount`",
                )
            },
            case(
                "leg without account",
                leg("{ account = \"irc.libera\", room = \"#r\" }"),
                6,
                "portal.legs.account",
                "no account [irc.libera]",
            ),
            case(
                "leg room of the wrong type",
                leg("{ account = \"irc.libera\", room = 5 }"),
                6,
                "portal.legs.room",
                "invalid type: integer",
            ),
            Case {
                hint: Some("did you mean `per-user`?"),
                ..case(
                    "bad mls identity",
                    format!("{MIN}[[portal]]\nname = \"a\"\nmls_identity = \"peruser\"\n"),
                    6,
                    "portal.mls_identity",
                    "unknown variant `peruser`",
                )
            },
            case(
                "no leaves at all",
                format!("{MIN}[[portal]]\nname = \"a\"\nmls_identity = \"per-user\"\nmax_user_leaves = 0\n"),
                7,
                "portal.max_user_leaves",
                "must be at least 1",
            ),
            Case {
                hint: Some("remove it, or set mls_identity = \"per-user\""),
                ..case(
                    "leaf settings on a shared portal",
                    format!("{MIN}[[portal]]\nname = \"a\"\nuser_leaf_idle_secs = 60\n"),
                    6,
                    "portal.user_leaf_idle_secs",
                    "only applies with mls_identity",
                )
            },
            case("remote room not a URI", remote("room = \"a.test/r/x\""), 10, "portal.room", "not a MIMI room URI"),
            case(
                "remote room of our own domain",
                remote("room = \"mimi://bridge.example.org/r/x\""),
                10,
                "portal.room",
                "this bridge's own domain",
            ),
            Case {
                hint: Some("add a [[mimi.peer]] with domain = \"c.test\""),
                ..case(
                    "remote room of no peer",
                    remote("room = \"mimi://c.test/r/x\""),
                    10,
                    "portal.room",
                    "c.test is not a configured peer",
                )
            },
            case(
                "remote room with per-user leaves",
                remote("room = \"mimi://a.test/r/x\"\nmls_identity = \"per-user\""),
                11,
                "portal.mls_identity",
                "shared leaf only",
            ),
            case(
                "remote room with a join policy",
                remote("room = \"mimi://a.test/r/x\"\njoin = \"invite\""),
                11,
                "portal.join",
                "decides who joins",
            ),
            case(
                "remote room twice",
                remote("room = \"mimi://a.test/r/x\"\n\n[[portal]]\nname = \"b\"\nroom = \"mimi://a.test/r/x\""),
                14,
                "portal.room",
                "already the room of portal \"a\"",
            ),
            case(
                "listen not an address",
                format!("{MIN}[mimi]\nlisten = \"localhost\"\n"),
                5,
                "mimi.listen",
                "invalid socket address",
            ),
            case(
                "plain HTTP off loopback",
                format!("{MIN}[mimi]\nlisten = \"0.0.0.0:8448\"\n"),
                5,
                "mimi.listen",
                "not a loopback address",
            ),
            Case {
                hint: Some("did you mean `open`?"),
                ..case(
                    "bad registration",
                    format!("{MIN}[mimi]\nregistration = \"opne\"\n"),
                    5,
                    "mimi.registration",
                    "unknown variant `opne`",
                )
            },
            case(
                "peer url",
                format!("{MIN}[[mimi.peer]]\ndomain = \"o.example\"\nurl = \"ftp://o.example\"\n"),
                6,
                "mimi.peer.url",
                "http(s)://",
            ),
            case(
                "missing TLS certificate",
                format!("{MIN}[mimi]\ntls_cert = \"/nonexistent/cert.pem\"\n"),
                5,
                "mimi.tls_cert",
                "does not exist",
            ),
            case(
                "world-readable TLS key",
                format!("{MIN}[mimi]\ntls_key = {:?}\n", open_key.display().to_string()),
                5,
                "mimi.tls_key",
                "readable by other users",
            ),
            case(
                "TLS certificate without its key",
                format!("{MIN}[mimi]\ntls_cert = {:?}\n", private_key.display().to_string()),
                5,
                "mimi.tls_cert",
                "needs mimi.tls_key",
            ),
            case(
                "TLS certificate that is no certificate",
                format!(
                    "{MIN}[mimi]\ntls_cert = {:?}\ntls_key = {:?}\n",
                    private_key.display().to_string(),
                    private_key.display().to_string()
                ),
                5,
                "mimi.tls_cert",
                "no PEM certificate",
            ),
            case(
                "https peer in plain-HTTP mode",
                format!("{MIN}[[mimi.peer]]\ndomain = \"o.example\"\nurl = \"https://o.example\"\n"),
                6,
                "mimi.peer.url",
                "without mimi.tls_cert",
            ),
            case(
                "admin off loopback without token",
                format!("{MIN}[admin]\nlisten = \"0.0.0.0:8449\"\n"),
                5,
                "admin.listen",
                "no admin.token_file",
            ),
            case(
                "missing token file",
                format!("{MIN}[admin]\ntoken_file = {:?}\n", missing.display().to_string()),
                5,
                "admin.token_file",
                "cannot read",
            ),
            case(
                "world-readable token file",
                format!("{MIN}[admin]\ntoken_file = {:?}\n", open_token.display().to_string()),
                5,
                "admin.token_file",
                "readable by other users",
            ),
            case("literal token", format!("{MIN}[admin]\ntoken = \"hunter2\"\n"), 5, "admin.token", "literal token"),
            case(
                "unset token variable",
                format!("{MIN}[admin]\ntoken = \"env:MIMI_BRIDGE_SURELY_UNSET_42\"\n"),
                5,
                "admin.token",
                "MIMI_BRIDGE_SURELY_UNSET_42 is not set",
            ),
            Case {
                hint: Some("did you mean `json`?"),
                ..case(
                    "bad log format",
                    format!("{MIN}[log]\nformat = \"jsn\"\n"),
                    5,
                    "log.format",
                    "unknown variant `jsn`",
                )
            },
            case("bad log filter", format!("{MIN}[log]\nlevel = \"info,=[\"\n"), 5, "log.level", "not a log filter"),
            case(
                "matrix bot mode with appservice keys",
                format!(
                    "{MIN}[matrix.hs]\nhomeserver_url = \"http://127.0.0.1:8008\"\nmode = \"bot\"\n\
                     server_name = \"hs\"\nlisten = \"127.0.0.1:9000\"\npassword = \"p\"\n"
                ),
                8,
                "matrix.hs.listen",
                "`listen` is for mode = \"appservice\"",
            ),
            case(
                "matrix bot mode with encryption off",
                format!(
                    "{MIN}[matrix.hs]\nhomeserver_url = \"http://127.0.0.1:8008\"\nmode = \"bot\"\n\
                     server_name = \"hs\"\npassword = \"p\"\nencryption = false\n"
                ),
                9,
                "matrix.hs.encryption",
                "`encryption` is for mode = \"appservice\"",
            ),
            case("syntax error", "[bridge]\ndomain = \n".into(), 2, "bridge.domain", "string values must be quoted"),
        ]
    }

    #[test]
    fn every_malformed_config_in_the_table_gets_its_located_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = cases(dir.path());
        assert!(cases.len() >= 15);
        let mut failures = Vec::new();
        for c in &cases {
            match parse(&c.text) {
                Ok(_) => failures.push(format!("{}: accepted", c.name)),
                Err(e) => {
                    let shown = e.to_string();
                    let ok = e.line == c.line
                        && e.key == c.key
                        && e.message.contains(c.message)
                        && (c.hint.is_none() || e.hint.as_deref() == c.hint)
                        && shown.starts_with(&format!("test.toml:{}:", c.line))
                        && shown.contains(&format!("key `{}`", c.key));
                    if !ok {
                        failures.push(format!(
                            "{}: want line {} key {:?} message ~{:?} hint {:?}; got line {} key {:?} hint {:?}: {shown}",
                            c.name, c.line, c.key, c.message, c.hint, e.line, e.key, e.hint
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = parse("[bridge]\ndomain = \n").expect_err("syntax");
        assert_eq!(e.line, 2, "{e}");
    }
}
