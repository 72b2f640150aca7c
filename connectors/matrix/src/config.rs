//! The body of a `[matrix.NAME]` table.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;

/// One Matrix account: an appservice registered with one homeserver, or one ordinary account (bot mode). Its
/// `Debug` never shows the tokens or the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How the bridge attaches: `"appservice"` (ghost users) or `"bot"` (one account relays everyone).
    pub mode: Mode,
    /// The homeserver's client-server API base URL (`https://matrix.example.org`).
    pub homeserver_url: String,
    /// The homeserver's server name (the part after `:` in user ids).
    pub server_name: String,
    /// Appservice: where the appservice API is served (the homeserver pushes transactions there).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Appservice: the URL the homeserver reaches [`Config::listen`] at (the registration's `url`); `http://LISTEN`
    /// if unset.
    #[serde(default)]
    pub url: Option<String>,
    /// Appservice: the registration id (`id` in the registration file).
    #[serde(default = "default_registration_id")]
    pub registration_id: String,
    /// Appservice: the localpart prefix of ghost users (`mimi_` gives `@mimi_…:server`).
    #[serde(default = "default_ghost_prefix")]
    pub ghost_prefix: String,
    /// The bridge's own user's localpart: in appservice mode the user of the appservice's namespace that joins the
    /// linked rooms, invites ghosts and decrypts (see [`Config::sender_localpart`]); in bot mode the account that
    /// logs in and relays.
    #[serde(default = "default_bot_localpart")]
    pub bot_localpart: String,
    /// Appservice: the token the bridge presents to the homeserver (a secret: `as_token_file` or `env:`).
    #[serde(default)]
    pub as_token: String,
    /// Appservice: the token the homeserver presents to the bridge (a secret: `hs_token_file` or `env:`).
    #[serde(default)]
    pub hs_token: String,
    /// Bot mode: the account's password, used to log in the first time (a secret: `password_file` or `env:`).
    /// Later starts restore the session kept in the data directory.
    #[serde(default)]
    pub password: Option<String>,
    /// Bot mode: an access token of the account instead of a password (a secret: `access_token_file` or `env:`).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Bot mode: how a bridged user's line is shown; `{name}` and `{text}` are replaced (an emote is always
    /// `* {name} {text}`).
    #[serde(default = "default_relay_format")]
    pub relay_format: String,
    /// The passphrase that encrypts the account's sqlite stores (keys, sessions; a secret: `store_passphrase_file`
    /// or `env:`). Set it before the first start: stores made without one cannot take one later
    /// ([`crate::store_passphrase`]).
    #[serde(default)]
    pub store_passphrase: Option<String>,
    /// Appservice: whether end-to-end-encrypted rooms are bridged (default `true`). With `false` the registration
    /// leaves out what encryption needs pushed (`receive_ephemeral`, `org.matrix.msc3202`), so the homeserver
    /// does less for each transaction (Synapse counts the one-time keys of the appservice's users in the room
    /// for every one it pushes: 2–3 ms more per push on SQLite, docs/benchmarks.md), and an encrypted room
    /// gets the notice that the bridge cannot read it, saying why.
    #[serde(default = "default_encryption")]
    pub encryption: bool,
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
            .field("relay_format", &self.relay_format)
            .field("encryption", &self.encryption)
            .finish_non_exhaustive()
    }
}

fn default_encryption() -> bool {
    true
}

fn default_relay_format() -> String {
    "{name}: {text}".into()
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
        match (&self.url, self.listen) {
            (Some(url), _) => url.clone(),
            (None, Some(listen)) => format!("http://{listen}"),
            (None, None) => String::new(),
        }
    }

    /// The appservice user's id.
    pub fn bot_user_id(&self) -> String {
        format!("@{}:{}", self.bot_localpart, self.server_name)
    }

    /// Appservice: the registration's `sender_localpart` (`BOT.appservice`), a user the bridge acts as only to
    /// ping and register. Not the bot itself: a homeserver lets no appservice's sender user `/sync`, and the bot's
    /// device reads its to-device inbox that way ([`crate::e2ee::inbox`]).
    pub fn sender_localpart(&self) -> String {
        format!("{}.appservice", self.bot_localpart)
    }

    /// Checks what deserialising does not: localparts, the server name, the URLs, what each mode needs.
    pub fn check(&self) -> Result<(), String> {
        let localpart_ok = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-".contains(&b))
        };
        if !localpart_ok(&self.bot_localpart) {
            return Err(format!("`bot_localpart` {:?}: only a-z 0-9 . _ = - are allowed", self.bot_localpart));
        }
        if self.server_name.is_empty() || self.server_name.contains(['/', '@', ' ']) {
            return Err(format!("`server_name` {:?} is not a Matrix server name", self.server_name));
        }
        let url_ok = |key: &str, url: &str| -> Result<(), String> {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{key}` {url:?}: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("`{key}` {url:?}: must be an http or https URL"));
            }
            Ok(())
        };
        url_ok("homeserver_url", &self.homeserver_url)?;
        match self.mode {
            Mode::Appservice => {
                if !localpart_ok(&self.ghost_prefix) {
                    return Err(format!("`ghost_prefix` {:?}: only a-z 0-9 . _ = - are allowed", self.ghost_prefix));
                }
                if self.bot_localpart.starts_with(&self.ghost_prefix)
                    || self.sender_localpart().starts_with(&self.ghost_prefix)
                {
                    return Err(format!(
                        "`bot_localpart` {:?} (and {:?}, the appservice's own user) must not start with the ghost prefix",
                        self.bot_localpart,
                        self.sender_localpart()
                    ));
                }
                if self.listen.is_none() {
                    return Err("`listen` must be set: where the homeserver reaches the appservice".into());
                }
                url_ok("url", &self.appservice_url())?;
                for (key, token) in [("as_token", &self.as_token), ("hs_token", &self.hs_token)] {
                    if token.trim().is_empty() {
                        return Err(format!("`{key}` must be set (`{key}_file` or \"env:NAME\")"));
                    }
                }
                for (key, set) in [("password", self.password.is_some()), ("access_token", self.access_token.is_some())]
                {
                    if set {
                        return Err(format!("`{key}` is for mode = \"bot\"; an appservice uses as_token and hs_token"));
                    }
                }
            }
            Mode::Bot => {
                let given = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
                if !given(&self.password) && !given(&self.access_token) {
                    return Err("`password` or `access_token` must be set (`password_file`, `access_token_file` or \
                                \"env:NAME\")"
                        .into());
                }
                for (key, set) in [
                    ("listen", self.listen.is_some()),
                    ("url", self.url.is_some()),
                    ("as_token", !self.as_token.is_empty()),
                    ("hs_token", !self.hs_token.is_empty()),
                ] {
                    if set {
                        return Err(format!("`{key}` is for mode = \"appservice\"; a bot logs in as `bot_localpart`"));
                    }
                }
                if !self.encryption {
                    return Err("`encryption` is for mode = \"appservice\"; a bot reads and writes encrypted rooms \
                                with its own device"
                        .into());
                }
                if !self.relay_format.contains("{text}") {
                    return Err(format!("`relay_format` {:?} must contain {{text}}", self.relay_format));
                }
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
    /// One ordinary account that joins the linked rooms and relays everyone as `name: text`.
    Bot,
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "appservice" => Ok(Mode::Appservice),
            "bot" => Ok(Mode::Bot),
            other => Err(serde::de::Error::custom(format!("`mode` {other:?}: expected \"appservice\" or \"bot\""))),
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
        assert!(c.encryption, "encrypted rooms are bridged unless the config says otherwise");
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
    fn bot_mode_needs_a_password_or_a_token_and_none_of_the_appservice_keys() {
        let bot = || {
            serde_json::json!({
                "mode": "bot", "homeserver_url": "http://127.0.0.1:8008", "server_name": "hs.test",
                "bot_localpart": "relay", "password": "pw",
            })
        };
        let c = parse(bot()).expect("valid");
        c.check().expect("valid");
        assert_eq!(
            (c.mode, c.bot_user_id().as_str(), c.relay_format.as_str()),
            (Mode::Bot, "@relay:hs.test", "{name}: {text}")
        );
        let mut j = bot();
        j.as_object_mut().expect("object").remove("password");
        assert!(parse(j).expect("parses").check().expect_err("no secret").contains("`password` or `access_token`"));
        for (key, value) in [("listen", "127.0.0.1:9000"), ("as_token", "a")] {
            let mut j = bot();
            j[key] = value.into();
            let e = parse(j).expect("parses").check().expect_err(key);
            assert!(e.contains(&format!("`{key}` is for mode = \"appservice\"")), "{e}");
        }
        let mut j = bot();
        j["encryption"] = false.into();
        let e = parse(j).expect("parses").check().expect_err("encryption off in bot mode");
        assert!(e.contains("`encryption` is for mode = \"appservice\""), "{e}");
        let mut j = bot();
        j["relay_format"] = "<{name}>".into();
        assert!(parse(j).expect("parses").check().expect_err("no text").contains("{text}"));
        let mut j = base();
        j["password"] = "pw".into();
        assert!(parse(j).expect("parses").check().expect_err("appservice").contains("for mode = \"bot\""));
        let mut j = bot();
        j["mode"] = "robot".into();
        assert!(parse(j).expect_err("mode").contains("expected \"appservice\" or \"bot\""));
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
