//! Ghost user ids: the Matrix users the appservice controls, one per non-Matrix member of a portal.
//!
//! A ghost's localpart is the configured prefix followed by the identity it stands for (the sender's MIMI URI
//! without its `mimi://` scheme), escaped per the Matrix spec's appendix "Mapping from other character sets", in its
//! bijective form:
//!
//! * `a-z`, `0-9`, `.` and `-` stay as they are;
//! * `A-Z` become `_` followed by the lowercase letter, and `_` becomes `__`;
//! * every other byte of the UTF-8 encoding (including `=`, `/` and `+`, which only some homeservers accept in
//!   localparts) becomes `=` followed by two lowercase hex digits.
//!
//! So `mimi://bridge.example.org/u/irc.libera~Alice` with prefix `mimi_` is
//! `@mimi_bridge.example.org=2fu=2firc.libera=7e_alice:server`. The mapping has exactly one output per input, and
//! [`GhostNames::identity`] refuses any localpart it would not have produced, so ghost ids round-trip. A whole user
//! id is at most 255 bytes (Matrix spec); identities too long for that cannot have a ghost.

use std::fmt::Write as _;

/// The longest user id the Matrix spec allows, in bytes (`@localpart:server`).
pub const MAX_USER_ID_BYTES: usize = 255;

/// The URI scheme ghost identities are written without.
const SCHEME: &str = "mimi://";

/// Why an identity cannot have a ghost.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GhostError {
    /// The identity is not a `mimi://` URI.
    #[error("{0:?} is not a mimi:// URI")]
    NotMimiUri(String),
    /// The ghost's user id would be longer than 255 bytes.
    #[error("the ghost user id for {uri:?} would be {len} bytes (at most {MAX_USER_ID_BYTES})")]
    TooLong {
        /// The identity.
        uri: String,
        /// The user id's length.
        len: usize,
    },
    /// The account has no ghosts (bot mode).
    #[error("this Matrix account has no ghost users (bot mode)")]
    NoGhosts,
}

/// The ghost namespace of one appservice: a localpart prefix on one homeserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GhostNames {
    prefix: String,
    server_name: String,
}

impl GhostNames {
    /// Ghosts `@{prefix}…:{server_name}`. The prefix should only contain `a-z 0-9 . _ = -` (the config checks).
    pub fn new(prefix: impl Into<String>, server_name: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), server_name: server_name.into() }
    }

    /// A namespace with no ghosts (bot mode): no user id is in it, no URI has one.
    pub fn none() -> Self {
        Self { prefix: String::new(), server_name: String::new() }
    }

    /// The localpart prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The homeserver's server name.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The ghost user id standing for the MIMI user `uri`.
    pub fn user_id(&self, uri: &str) -> Result<String, GhostError> {
        if self.server_name.is_empty() {
            return Err(GhostError::NoGhosts);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| GhostError::NotMimiUri(uri.to_owned()))?;
        let id = format!("@{}{}:{}", self.prefix, escape(rest), self.server_name);
        if id.len() > MAX_USER_ID_BYTES {
            return Err(GhostError::TooLong { uri: uri.to_owned(), len: id.len() });
        }
        Ok(id)
    }

    /// Whether `user_id` is in the ghost namespace (whether or not it decodes).
    pub fn is_ghost(&self, user_id: &str) -> bool {
        self.localpart(user_id).is_some()
    }

    /// The MIMI URI a ghost user id stands for; `None` for users outside the namespace and for localparts that
    /// [`GhostNames::user_id`] would not have produced.
    pub fn identity(&self, user_id: &str) -> Option<String> {
        unescape(self.localpart(user_id)?).map(|rest| format!("{SCHEME}{rest}"))
    }

    /// The escaped part of a ghost's localpart.
    fn localpart<'a>(&self, user_id: &'a str) -> Option<&'a str> {
        let (local, server) = user_id.strip_prefix('@')?.split_once(':')?;
        (!server.is_empty() && server == self.server_name).then_some(())?;
        local.strip_prefix(self.prefix.as_str())
    }

    /// The regular expression of the namespace, for the appservice registration (`^@prefix.*:server$`).
    pub fn namespace_regex(&self) -> String {
        format!("@{}.*:{}", regex_escape(&self.prefix), regex_escape(&self.server_name))
    }
}

/// Escapes `s` per the spec's bijective mapping (see the module docs).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => out.push(char::from(b)),
            b'A'..=b'Z' => {
                out.push('_');
                out.push(char::from(b.to_ascii_lowercase()));
            }
            b'_' => out.push_str("__"),
            _ => {
                let _ = write!(out, "={b:02x}");
            }
        }
    }
    out
}

/// Reverses [`escape`]; `None` unless `s` is exactly what `escape` produces for some string.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => out.push(b),
            b'_' => match bytes.next()? {
                b'_' => out.push(b'_'),
                c @ b'a'..=b'z' => out.push(c.to_ascii_uppercase()),
                _ => return None,
            },
            b'=' => {
                let hi = hex_digit(bytes.next()?)?;
                let lo = hex_digit(bytes.next()?)?;
                let v = hi << 4 | lo;
                // Bytes `escape` writes literally or as `_x` must not appear escaped.
                if v.is_ascii_alphanumeric() || matches!(v, b'.' | b'-' | b'_') {
                    return None;
                }
                out.push(v);
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// A lowercase hex digit's value.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Escapes regular-expression metacharacters.
pub(crate) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> GhostNames {
        GhostNames::new("mimi_", "hs.test")
    }

    #[test]
    fn escapes_per_the_spec_mapping() {
        assert_eq!(escape("Ab_c"), "_ab__c");
        assert_eq!(escape("a#b"), "a=23b");
        assert_eq!(escape("á"), "=c3=a1");
        assert_eq!(escape("x=y/z+"), "x=3dy=2fz=2b");
    }

    #[test]
    fn a_ghost_id_names_its_identity_and_decodes_back() {
        let uri = "mimi://bridge.example.org/u/irc.libera~Alice";
        let id = names().user_id(uri).expect("fits");
        assert_eq!(id, "@mimi_bridge.example.org=2fu=2firc.libera=7e_alice:hs.test");
        assert!(names().is_ghost(&id));
        assert_eq!(names().identity(&id).as_deref(), Some(uri));
    }

    #[test]
    fn users_outside_the_namespace_are_not_ghosts() {
        assert!(!names().is_ghost("@alice:hs.test"));
        assert!(!names().is_ghost("@mimi_x:other.test"));
        assert_eq!(names().identity("@alice:hs.test"), None);
    }

    #[test]
    fn localparts_escape_would_not_produce_are_refused() {
        for bad in ["A", "_A", "_1", "=41", "=5f", "=2", "=2F", "a b", "=ff"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn identities_too_long_for_a_user_id_are_refused() {
        let uri = format!("mimi://{}", "é".repeat(60));
        assert!(matches!(names().user_id(&uri), Err(GhostError::TooLong { .. })));
        assert!(matches!(names().user_id("https://x"), Err(GhostError::NotMimiUri(_))));
    }

    #[test]
    fn the_namespace_regex_escapes_dots() {
        assert_eq!(names().namespace_regex(), "@mimi_.*:hs\\.test");
    }

    proptest! {
        #[test]
        fn escaping_round_trips(s in any::<String>()) {
            let e = escape(&s);
            prop_assert!(e.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-".contains(&b)));
            prop_assert_eq!(unescape(&e), Some(s));
        }

        #[test]
        fn ghost_ids_round_trip(rest in "[ -~]{0,80}|\\PC{0,40}") {
            let uri = format!("mimi://{rest}");
            if let Ok(id) = names().user_id(&uri) {
                prop_assert!(id.len() <= MAX_USER_ID_BYTES);
                prop_assert_eq!(names().identity(&id), Some(uri));
            }
        }
    }
}
