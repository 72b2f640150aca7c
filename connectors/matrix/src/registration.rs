//! The appservice registration file the homeserver loads (`app_service_config_files` in Synapse).
//!
//! Written as YAML whose strings are JSON string literals (valid YAML double-quoted scalars), so no value can
//! break the file. The user namespace (the ghost prefix, and the bot) is exclusive, the appservice's own user
//! is `BOT.appservice` ([`Config::sender_localpart`]: the bot itself could not sync its device's inbox), there are
//! no alias or room namespaces, and `rate_limited: false`: a bridge speaks for many people.
//! `io.element.msc4190: true` lets the appservice create its ghosts' devices without logging them in;
//! `receive_ephemeral: true` and `org.matrix.msc3202: true` bring the to-device messages, device list changes and
//! key counts of end-to-end encryption in its transactions; both are left out with `encryption = false`
//! ([`Config::encryption`]), which spares the homeserver their work on every transaction.

use crate::config::Config;
use crate::ghost::{GhostNames, regex_escape};

/// The registration YAML for `config` (tokens as the config has them).
pub fn registration_yaml(config: &Config) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let ghosts = GhostNames::new(config.ghost_prefix.clone(), config.server_name.clone());
    format!(
        "# Appservice registration of mimi-bridge (`mimi-bridge generate-registration`). Contains secrets.\n\
         id: {id}\n\
         url: {url}\n\
         as_token: {as_token}\n\
         hs_token: {hs_token}\n\
         sender_localpart: {sender}\n\
         rate_limited: false\n\
         io.element.msc4190: true\n\
         {encryption}\
         namespaces:\n  users:\n    - exclusive: true\n      regex: {regex}\n    - exclusive: true\n      regex: {bot}\n  aliases: []\n  rooms: []\n",
        id = q(&config.registration_id),
        url = q(&config.appservice_url()),
        as_token = q(&config.as_token),
        hs_token = q(&config.hs_token),
        sender = q(&config.sender_localpart()),
        bot = q(&format!("@{}:{}", regex_escape(&config.bot_localpart), regex_escape(&config.server_name))),
        regex = q(&ghosts.namespace_regex()),
        encryption = if config.encryption { "receive_ephemeral: true\norg.matrix.msc3202: true\n" } else { "" },
    )
}

/// A fresh random token (256 bits, hex).
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_names_the_namespace_tokens_and_url() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "mode": "appservice", "homeserver_url": "http://127.0.0.1:8008", "server_name": "hs.test",
            "listen": "127.0.0.1:9000", "as_token": "a\"b", "hs_token": "h",
        }))
        .expect("valid");
        let yaml = registration_yaml(&config);
        assert!(yaml.contains("\nas_token: \"a\\\"b\"\n"), "{yaml}");
        assert!(yaml.contains("\nurl: \"http://127.0.0.1:9000\"\n"), "{yaml}");
        assert!(yaml.contains("\nrate_limited: false\n"), "{yaml}");
        assert!(yaml.contains("\nio.element.msc4190: true\n"), "ghosts get devices: {yaml}");
        assert!(yaml.contains("\nreceive_ephemeral: true\norg.matrix.msc3202: true\n"), "to-device: {yaml}");
        assert!(yaml.contains("    - exclusive: true\n      regex: \"@mimi_.*:hs\\\\.test\"\n"), "{yaml}");
        assert!(
            yaml.contains("    - exclusive: true\n      regex: \"@mimi\\\\-bridge:hs\\\\.test\"\n"),
            "the bot: {yaml}"
        );
        assert!(yaml.contains("\nsender_localpart: \"mimi-bridge.appservice\"\n"), "not the bot: {yaml}");
        let off = Config { encryption: false, ..config };
        let yaml = registration_yaml(&off);
        assert!(!yaml.contains("receive_ephemeral") && !yaml.contains("msc3202"), "encryption off: {yaml}");
        assert!(yaml.contains("\nio.element.msc4190: true\nnamespaces:\n"), "ghosts still get devices: {yaml}");
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
