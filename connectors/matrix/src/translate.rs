//! What the translation layer knows about one account: who is who on Matrix and under which MIMI URIs.
//!
//! The translation itself is sans-IO (no sockets, no tokio): [`crate::inbound`] turns Matrix events into core
//! events, [`crate::outbound`] turns core events into the client-server API calls to make.

use crate::ghost::GhostNames;
use bridge_api::{AccountId, LegacyUser};

/// The identities one Matrix account translates between.
#[derive(Debug, Clone)]
pub struct Translator {
    /// The account (`matrix.NAME`).
    pub account: AccountId,
    /// The bridge's MIMI domain, for the URIs of Matrix users.
    pub domain: String,
    /// The appservice's ghost namespace.
    pub ghosts: GhostNames,
    /// The appservice's own user (`sender_localpart`), or the bot-mode account: whose events are the bridge's.
    pub bot_user_id: String,
    /// Bot mode: everything is sent by [`Translator::bot_user_id`], each line shown with this format (`{name}`,
    /// `{text}`); `None` for an appservice, whose ghosts speak for themselves.
    pub relay: Option<String>,
}

impl Translator {
    /// Whether `user_id` is a user the bridge controls (a ghost or the appservice's own user).
    pub fn is_bridge_user(&self, user_id: &str) -> bool {
        user_id == self.bot_user_id || self.ghosts.is_ghost(user_id)
    }

    /// The MIMI URI of a Matrix user: what a ghost stands for, or the user's bridged URI.
    pub fn user_uri(&self, user_id: &str) -> String {
        self.ghosts
            .identity(user_id)
            .unwrap_or_else(|| LegacyUser::new(self.account.clone(), user_id).uri(&self.domain))
    }

    /// The Matrix user a MIMI user URI is shown as: the Matrix user itself when it is one of this account's, its
    /// ghost otherwise; `None` when it can have no ghost (or in bot mode, which has none).
    pub fn matrix_user(&self, uri: &str) -> Option<String> {
        match LegacyUser::from_uri(uri, &self.domain) {
            Ok(user) if user.account == self.account => Some(user.native_id),
            _ if self.relay.is_some() => None,
            _ => self.ghosts.user_id(uri).ok(),
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// The translator the unit tests use: account `matrix.hs`, domain `b.test`, ghosts `@mimi_…:hs.test`.
    pub(crate) fn translator() -> Translator {
        Translator {
            account: AccountId::new("matrix", "hs").expect("valid account"),
            domain: "b.test".into(),
            ghosts: GhostNames::new("mimi_", "hs.test"),
            bot_user_id: "@mimibot:hs.test".into(),
            relay: None,
        }
    }

    #[test]
    fn matrix_users_and_ghosts_map_to_uris_and_back() {
        let t = translator();
        let alice = t.user_uri("@alice:hs.test");
        assert_eq!(alice, "mimi://b.test/u/matrix.hs~%40alice%3Ahs.test");
        assert_eq!(t.matrix_user(&alice).as_deref(), Some("@alice:hs.test"));
        let irc = "mimi://b.test/u/irc.libera~bob";
        let ghost = t.matrix_user(irc).expect("ghost");
        assert!(t.is_bridge_user(&ghost) && !t.is_bridge_user("@alice:hs.test"));
        assert_eq!(t.user_uri(&ghost), irc);
    }
}
