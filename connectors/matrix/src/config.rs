//! The body of a `[matrix.NAME]` table.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;

/// One Matrix account: an appservice registered with one homeserver. Its `Debug` never shows the tokens.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How the bridge attaches: only `"appservice"` so far.
    pub mode: Mode,
    /// The homeserver's client-server API base URL (`https://matrix.example.org`).
    pub homeserver_url: String,
    /// The homeserver's server name (the part after `:` in user ids).
    pub server_name: String,
    /// Where the appservice API is served (the homeserver pushes transactions there).
    pub listen: SocketAddr,
    /// The URL the homeserver reaches [`Config::listen`] at (the registration's `url`); `http://LISTEN` if unset.
    #[serde(default)]
    pub url: Option<String>,
    /// The registration id (`id` in the registration file).
    #[serde(default = "default_registration_id")]
    pub registration_id: String,
    /// The localpart prefix of ghost users (`mimi_` gives `@mimi_…:server`).
    #[serde(default = "default_ghost_prefix")]
    pub ghost_prefix: String,
    /// The appservice's own user (`sender_localpart`): it joins the linked rooms and invites ghosts.
    #[serde(default = "default_bot_localpart")]
    pub bot_localpart: String,
    /// The token the bridge presents to the homeserver (a secret: `as_token_file` or `env:`).
    pub as_token: String,
    /// The token the homeserver presents to the bridge (a secret: `hs_token_file` or `env:`).
    pub hs_token: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("mode", &self.mode)
            .field("homeserver_url", &self.homeserver_url)
            .field("server_name", &self.server_name)
            .field("listen", &self.listen)
            .field("url", &self.url)
            .field("registration_id", &self.registration_id)
            .field("ghost_prefix", &self.ghost_prefix)
            .field("bot_localpart", &self.bot_localpart)
            .finish_non_exhaustive()
    }
}

fn default_registration_id() -> String {
    "mimi-bridge".into()
}

fn default_ghost_prefix() -> String {
    "mimi_".into()
}

fn default_bot_localpart() -> String {
    "mimi-bridge".into()
}

impl Config {
    /// The URL the homeserver pushes transactions to.
    pub fn appservice_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("http://{}", self.listen))
    }

    /// The appservice user's id.
    pub fn bot_user_id(&self) -> String {
        format!("@{}:{}", self.bot_localpart, self.server_name)
    }

    /// Checks what deserialising does not: localparts, the server name, the URLs.
    pub fn check(&self) -> Result<(), String> {
        let localpart_ok = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-".contains(&b))
        };
        if !localpart_ok(&self.ghost_prefix) {
            return Err(format!("`ghost_prefix` {:?}: only a-z 0-9 . _ = - are allowed", self.ghost_prefix));
        }
        if !localpart_ok(&self.bot_localpart) {
            return Err(format!("`bot_localpart` {:?}: only a-z 0-9 . _ = - are allowed", self.bot_localpart));
        }
        if self.bot_localpart.starts_with(&self.ghost_prefix) {
            return Err(format!("`bot_localpart` {:?} must not start with the ghost prefix", self.bot_localpart));
        }
        if self.server_name.is_empty() || self.server_name.contains(['/', '@', ' ']) {
            return Err(format!("`server_name` {:?} is not a Matrix server name", self.server_name));
        }
        for (key, url) in [("homeserver_url", self.homeserver_url.clone()), ("url", self.appservice_url())] {
            let parsed = reqwest::Url::parse(&url).map_err(|e| format!("`{key}` {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("`{key}` {url:?}: must be an http or https URL"));
            }
        }
        for (key, token) in [("as_token", &self.as_token), ("hs_token", &self.hs_token)] {
            if token.trim().is_empty() {
                return Err(format!("`{key}` must be set (`{key}_file` or \"env:NAME\")"));
            }
        }
        Ok(())
    }
}

/// How a Matrix account attaches to its homeserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An application service with ghost users.
    Appservice,
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "appservice" => Ok(Mode::Appservice),
            "bot" => Err(serde::de::Error::custom(
                "`mode` \"bot\" is not available yet: this build bridges Matrix as an appservice only (mode = \"appservice\")",
            )),
            other => Err(serde::de::Error::custom(format!("`mode` {other:?}: expected \"appservice\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<Config, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "mode": "appservice", "homeserver_url": "http://127.0.0.1:8008", "server_name": "hs.test",
            "listen": "127.0.0.1:9000", "as_token": "a", "hs_token": "h",
        })
    }

    #[test]
    fn defaults_and_derived_values() {
        let c = parse(base()).expect("valid");
        c.check().expect("valid");
        assert_eq!(c.appservice_url(), "http://127.0.0.1:9000");
        assert_eq!(c.bot_user_id(), "@mimi-bridge:hs.test");
        assert_eq!(c.ghost_prefix, "mimi_");
    }

    #[test]
    fn debug_never_shows_the_tokens() {
        let mut j = base();
        j["as_token"] = "as-secret-value".into();
        j["hs_token"] = "hs-secret-value".into();
        let shown = format!("{:?}", parse(j).expect("valid"));
        assert!(!shown.contains("secret-value") && shown.contains("hs.test"), "{shown}");
    }

    #[test]
    fn bot_mode_is_refused_as_not_yet_available() {
        let mut j = base();
        j["mode"] = "bot".into();
        let e = parse(j).expect_err("bot mode");
        assert!(e.contains("`mode` \"bot\" is not available yet"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (key, value, msg) in [
            ("ghost_prefix", "Mimi", "`ghost_prefix`"),
            ("bot_localpart", "mimi_bot", "must not start with the ghost prefix"),
            ("homeserver_url", "ftp://x", "`homeserver_url`"),
            ("hs_token", " ", "`hs_token` must be set"),
        ] {
            let mut j = base();
            j[key] = value.into();
            let e = parse(j).expect("parses").check().expect_err(key);
            assert!(e.contains(msg), "{key}: {e}");
        }
    }
}
