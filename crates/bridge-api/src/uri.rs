//! Identity URIs (draft-ietf-mimi-content §2: `mimi://<domain>/u/<user>`, `/r/<room>`) and the escaping rule that
//! gives every legacy user a stable URI under the bridge's domain.
//!
//! # The escaping rule
//!
//! A legacy user's URI is `mimi://<bridge domain>/u/<network>.<account>~<escaped native id>`, e.g.
//! `mimi://bridge.example.org/u/irc.libera~alice`.
//!
//! * `<network>.<account>` is the [`AccountId`], which only ever contains `a-z 0-9 - _` and one `.`.
//! * `<escaped native id>` is the native id (IRC nick, Matrix user id, JID with resource…) as UTF-8 where every
//!   byte **outside** `A-Z a-z 0-9 - . _` is written as `%` followed by two **uppercase** hex digits (RFC 3986
//!   percent-encoding of everything but the unreserved set minus `~`).
//!
//! So `@alice:example.org` becomes `%40alice%3Aexample.org`, and `room@muc.example.org/Bob Smith` becomes
//! `room%40muc.example.org%2FBob%20Smith`. The rule is injective and has exactly one output per input (uppercase
//! hex, no optional escapes), so URIs can be compared as strings; [`LegacyUser::from_uri`] refuses anything that
//! [`LegacyUser::uri`] would not have produced.

use crate::ids::{AccountId, IdError};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Why a URI could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// The URI does not start with `mimi://<domain>/u/`.
    #[error("{0:?} is not a mimi://DOMAIN/u/USER URI")]
    NotUserUri(String),
    /// The URI is a user URI of another domain.
    #[error("{uri:?} does not belong to this bridge's domain {domain:?}")]
    ForeignDomain {
        /// The URI.
        uri: String,
        /// Our domain.
        domain: String,
    },
    /// The user part is not `network.account~escaped-id`.
    #[error("{0:?} is not a bridged legacy user (expected NETWORK.ACCOUNT~ESCAPED_ID)")]
    NotLegacyUser(String),
    /// A percent-escape is malformed, lowercase, or escapes a byte that must not be escaped.
    #[error("bad escaping in {0:?}")]
    BadEscape(String),
    /// The account part is not a valid account id.
    #[error(transparent)]
    Account(#[from] IdError),
}

/// A person on a legacy network, as a connector reports them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LegacyUser {
    /// The account (and so the network) the user was seen through.
    pub account: AccountId,
    /// The network's stable id for the user: IRC nick (or account name when known), Matrix user id, full JID or
    /// occupant JID.
    pub native_id: String,
    /// What to show: IRC nick, Matrix display name, MUC nick. Not part of the identity.
    pub display_name: Option<String>,
}

impl LegacyUser {
    /// A user without a display name.
    pub fn new(account: AccountId, native_id: impl Into<String>) -> Self {
        Self { account, native_id: native_id.into(), display_name: None }
    }

    /// The user's MIMI URI under the bridge's `domain`.
    pub fn uri(&self, domain: &str) -> String {
        format!("mimi://{domain}/u/{}", self.user_part())
    }

    /// The `<network>.<account>~<escaped id>` part of the URI.
    pub fn user_part(&self) -> String {
        format!("{}~{}", self.account, escape(&self.native_id))
    }

    /// Parses a URI made by [`LegacyUser::uri`] for `domain`. The display name is not part of the URI.
    pub fn from_uri(uri: &str, domain: &str) -> Result<Self, UriError> {
        let rest = uri.strip_prefix("mimi://").ok_or_else(|| UriError::NotUserUri(uri.to_owned()))?;
        let (dom, path) = rest.split_once('/').ok_or_else(|| UriError::NotUserUri(uri.to_owned()))?;
        let user = path.strip_prefix("u/").ok_or_else(|| UriError::NotUserUri(uri.to_owned()))?;
        if dom != domain {
            return Err(UriError::ForeignDomain { uri: uri.to_owned(), domain: domain.to_owned() });
        }
        let (acct, esc) = user.split_once('~').ok_or_else(|| UriError::NotLegacyUser(uri.to_owned()))?;
        let account = AccountId::parse(acct)?;
        let native_id = unescape(esc).ok_or_else(|| UriError::BadEscape(uri.to_owned()))?;
        Ok(Self::new(account, native_id))
    }

    /// The name to show: the display name if there is one, else the native id.
    pub fn shown_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.native_id)
    }
}

/// The URI of a portal's room: `mimi://<domain>/r/<portal name>`.
pub fn room_uri(domain: &str, portal: &crate::PortalId) -> String {
    format!("mimi://{domain}/r/{portal}")
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// Escapes a native id with the rule described in the module docs.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reverses [`escape`]; `None` unless `s` is exactly what `escape` produces for some string.
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)) {
                    return None;
                }
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                if is_plain(v) {
                    return None; // an optional escape: not canonical
                }
                out.push(v);
                i += 3;
            }
            c if is_plain(c) => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acct() -> AccountId {
        AccountId::parse("matrix.hs").expect("valid")
    }

    #[test]
    fn examples_from_the_docs() {
        let irc = LegacyUser::new(AccountId::parse("irc.libera").expect("valid"), "alice");
        assert_eq!(irc.uri("bridge.example.org"), "mimi://bridge.example.org/u/irc.libera~alice");
        let mx = LegacyUser::new(acct(), "@alice:example.org");
        assert_eq!(mx.uri("b.org"), "mimi://b.org/u/matrix.hs~%40alice%3Aexample.org");
        let jid = LegacyUser::new(acct(), "room@muc.example.org/Bob Smith");
        assert_eq!(jid.user_part(), "matrix.hs~room%40muc.example.org%2FBob%20Smith");
        assert_eq!(LegacyUser::from_uri(&jid.uri("b.org"), "b.org").expect("parses"), jid);
    }

    #[test]
    fn rejects_non_canonical_and_foreign() {
        assert_eq!(unescape("%41"), None, "optional escape of 'A'");
        assert_eq!(unescape("%3a"), None, "lowercase hex");
        assert_eq!(unescape("a~b"), None, "raw tilde");
        assert_eq!(unescape("%4"), None, "short escape");
        assert_eq!(unescape("%FF"), None, "not UTF-8");
        assert!(matches!(
            LegacyUser::from_uri("mimi://other.org/u/irc.x~a", "b.org"),
            Err(UriError::ForeignDomain { .. })
        ));
        assert!(matches!(LegacyUser::from_uri("mimi://b.org/u/alice", "b.org"), Err(UriError::NotLegacyUser(_))));
        assert!(matches!(LegacyUser::from_uri("https://b.org/u/a", "b.org"), Err(UriError::NotUserUri(_))));
    }

    proptest! {
        #[test]
        fn escaping_round_trips(s in any::<String>()) {
            let e = escape(&s);
            prop_assert!(e.bytes().all(|b| is_plain(b) || b == b'%' || b.is_ascii_hexdigit()));
            prop_assert_eq!(unescape(&e), Some(s.clone()));
            let u = LegacyUser::new(acct(), s);
            prop_assert_eq!(LegacyUser::from_uri(&u.uri("b.org"), "b.org").expect("round trip"), u);
        }

        #[test]
        fn unescape_never_panics_and_is_injective(s in "[A-Za-z0-9%._~-]{0,20}") {
            if let Some(d) = unescape(&s) {
                prop_assert_eq!(escape(&d), s);
            }
        }
    }
}
