//! The configuration file: types, loading, and errors that name file, line, column and key.
//!
//! Every table rejects unknown keys; a misspelt key gets a "did you mean" hint. Semantic checks (a leg naming an
//! account that is not configured, a room linked twice, a plain-HTTP listener off loopback) point at the offending
//! key too. `config.example.toml` documents every key.

use bridge_core::store::Backend;
use bridge_core::store::repo::MlsIdentity;
use bridge_core::{AccountId, PortalId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

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
    pub queue_depth: usize,
    /// Largest inbound event accepted, in bytes.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
}

fn default_store() -> Backend {
    Backend::Redb
}
fn default_queue_depth() -> usize {
    256
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
    pub tls_cert: Option<PathBuf>,
    /// TLS key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates for peer authentication (PEM).
    pub trust_anchors: Option<PathBuf>,
    /// Who may register native clients.
    #[serde(default)]
    pub registration: Registration,
    /// `[[mimi.peer]]` entries.
    #[serde(default)]
    pub peer: Vec<PeerConfig>,
}

impl Default for MimiConfig {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, default_mimi_listen_addr()),
            tls_cert: None,
            tls_key: None,
            trust_anchors: None,
            registration: Registration::Open,
            peer: Vec::new(),
        }
    }
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
    pub url: String,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin API, metrics and health.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<SocketAddr>,
    /// File holding the admin token.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), token_file: None }
    }
}

fn default_admin_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 8449)))
}

/// `[[portal]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Portal name; room URI `mimi://DOMAIN/r/NAME`.
    pub name: Spanned<String>,
    /// How legacy senders appear in the MLS group.
    #[serde(default)]
    pub mls_identity: MlsIdentity,
    /// Linked legacy rooms.
    #[serde(default)]
    pub legs: Vec<LegConfig>,
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
    let table = table_at(text, span.start).unwrap_or_default();
    let mut key = text.get(span.clone()).unwrap_or("").trim().trim_matches('"').to_owned();
    if key.contains('\n') || key.len() > 64 {
        key.clear();
    }
    let full_key = match (table.is_empty(), key.is_empty()) {
        (false, false) => format!("{table}.{key}"),
        (false, true) => table.clone(),
        (true, _) => key.clone(),
    };
    let mut err = at(file, text, span, &full_key, msg.clone());
    // serde: "unknown field `nik`, expected one of `server`, `nick`" / "expected `a` or `b`".
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let bad = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest.split("expected").nth(1).unwrap_or("").split('`').skip(1).step_by(2).collect();
        err.hint = closest(bad, expected.iter().copied())
            .map(|c| format!("did you mean `{c}`?"))
            .or_else(|| (!expected.is_empty()).then(|| format!("valid keys: {}", expected.join(", "))));
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let bad = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest.split("expected").nth(1).unwrap_or("").split('`').skip(1).step_by(2).collect();
        err.hint = closest(bad, expected.iter().copied()).map(|c| format!("did you mean `{c}`?"));
    }
    err
}

/// The networks this build has connectors for.
pub const BUILT_NETWORKS: &[&str] = &[];

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
        let cfg: Config = toml::from_str(text).map_err(|e| from_toml(path, text, e))?;
        cfg.validate(path, text)?;
        Ok(cfg)
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

    fn validate(&self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let domain = self.bridge.domain.get_ref();
        let valid_domain = !domain.is_empty()
            && domain.split('.').all(|l| {
                !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !l.starts_with('-')
            });
        if !valid_domain {
            return Err(at(file, text, self.bridge.domain.span(), "bridge.domain", "not a valid DNS domain name"));
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
                accounts.insert(id);
            }
        }
        let mut names = BTreeSet::new();
        let mut rooms = BTreeMap::new();
        for p in &self.portal {
            let id = PortalId::new(p.name.get_ref().clone())
                .map_err(|e| at(file, text, p.name.span(), "portal.name", e.to_string()))?;
            if !names.insert(id.clone()) {
                return Err(at(file, text, p.name.span(), "portal.name", format!("portal {id:?} is defined twice")));
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
            if !(peer.url.starts_with("https://") || peer.url.starts_with("http://")) || peer.domain.is_empty() {
                return Err(ConfigError {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    key: "mimi.peer".into(),
                    message: format!("peer {:?} needs a domain and an http(s):// url, got {:?}", peer.domain, peer.url),
                    hint: None,
                });
            }
        }
        for (key, path) in [("mimi.trust_anchors", &self.mimi.trust_anchors), ("mimi.tls_cert", &self.mimi.tls_cert)] {
            if let Some(p) = path
                && !p.exists()
            {
                return Err(ConfigError {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    key: key.into(),
                    message: format!("{} does not exist", p.display()),
                    hint: None,
                });
            }
        }
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
        let admin = self.admin.listen.get_ref();
        if !admin.ip().is_loopback() && self.admin.token_file.is_none() {
            return Err(at(
                file,
                text,
                self.admin.listen.span(),
                "admin.listen",
                format!("{admin} is not a loopback address and no admin.token_file is set"),
            ));
        }
        Ok(())
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
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).expect("valid");
        assert_eq!(c.bridge.store, Backend::Redb);
        assert_eq!(c.mimi.listen.get_ref().port(), 8448);
        assert!(c.portal.is_empty());
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
    fn accounts_of_networks_without_a_connector_are_refused() {
        let e = parse(&format!("{MIN}[matrix.hs]\nhomeserver = \"x\"\n")).expect_err("no matrix yet");
        assert_eq!(e.key, "matrix.hs");
        assert!(e.message.contains("no matrix connector"), "{e}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = parse("[bridge]\ndomain = \n").expect_err("syntax");
        assert_eq!(e.line, 2, "{e}");
    }
}
