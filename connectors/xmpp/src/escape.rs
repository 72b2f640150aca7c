//! Puppet JID localparts: a reversible escaping after XEP-0106 (JID Escaping) that also escapes uppercase.
//!
//! In component mode every bridged user is a puppet `LOCALPART@component.domain`. XMPP servers case-fold
//! localparts (nodeprep / PRECIS UsernameCaseMapped), so `Alice` and `alice` would be one JID; and XEP-0106 alone
//! leaves most bytes as they are. The rule here:
//!
//! * the bytes `a-z 0-9 . - _` stay as they are (except a `.` at the start or end, which is escaped);
//! * **every other byte** of the UTF-8 form — uppercase ASCII, space, `" & ' / : < > @ \`, control characters and
//!   each byte of a non-ASCII character — is written `\` followed by two **lowercase** hex digits, which is XEP-0106's
//!   form for its ten characters (`\20` space, `\40` `@`, `\5c` `\`…) extended to every byte.
//!
//! So `Alice` → `\41lice`, `bob smith@irc` → `bob\20smith\40irc`, `é` → `\c3\a9`. The output survives any
//! server-side case folding or normalisation (it is lowercase ASCII), the rule is injective, and [`unescape`]
//! accepts only what [`escape`] produces, so the mapping is a bijection between strings and valid localparts.
//! The empty string has no localpart.

/// Most bytes a localpart may have (RFC 7622).
pub const MAX_LOCALPART: usize = 1023;

/// Why a localpart could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    /// Empty names have no localpart.
    #[error("an empty name has no JID localpart")]
    Empty,
    /// The escaped form would exceed 1023 bytes.
    #[error("the escaped localpart would be {0} bytes, more than 1023")]
    TooLong(usize),
    /// The localpart was not made by [`escape`].
    #[error("{0:?} is not an escaped puppet localpart")]
    NotEscaped(String),
}

fn kept(b: u8, first_or_last: bool) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || (b == b'.' && !first_or_last)
}

/// Escapes `name` into a JID localpart (see the module docs).
pub fn escape(name: &str) -> Result<String, EscapeError> {
    if name.is_empty() {
        return Err(EscapeError::Empty);
    }
    let bytes = name.as_bytes();
    let mut out = String::with_capacity(name.len() + 8);
    for (i, &b) in bytes.iter().enumerate() {
        if kept(b, i == 0 || i + 1 == bytes.len()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:02x}"));
        }
    }
    if out.len() > MAX_LOCALPART {
        return Err(EscapeError::TooLong(out.len()));
    }
    Ok(out)
}

/// The name a localpart made by [`escape`] stands for.
pub fn unescape(local: &str) -> Result<String, EscapeError> {
    let bad = || EscapeError::NotEscaped(local.to_owned());
    if local.is_empty() || local.len() > MAX_LOCALPART {
        return Err(bad());
    }
    let src = local.as_bytes();
    let mut bytes = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        if src[i] == b'\\' {
            let hex = src.get(i + 1..i + 3).ok_or_else(bad)?;
            if !hex.iter().all(|h| h.is_ascii_digit() || (b'a'..=b'f').contains(h)) {
                return Err(bad());
            }
            let s = std::str::from_utf8(hex).map_err(|_| bad())?;
            bytes.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            bytes.push(src[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(bytes).map_err(|_| bad())?;
    // Canonical form only: re-escaping must give the input back (no escaped byte that should have been kept).
    if escape(&name).as_deref() != Ok(local) {
        return Err(bad());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn case_is_kept_apart() {
        assert_eq!(escape("Alice").as_deref(), Ok("\\41lice"));
        assert_eq!(escape("alice").as_deref(), Ok("alice"));
        assert_ne!(escape("Alice"), escape("alice"));
        assert_eq!(escape("ALICE").map(|s| s.to_lowercase()), escape("ALICE"));
    }

    #[test]
    fn xep_0106_characters_use_its_codes() {
        assert_eq!(escape("bob smith@irc/x:y").as_deref(), Ok("bob\\20smith\\40irc\\2fx\\3ay"));
        assert_eq!(escape("a\\b").as_deref(), Ok("a\\5cb"));
        assert_eq!(escape(".dot.").as_deref(), Ok("\\2edot\\2e"));
    }

    #[test]
    fn only_canonical_forms_unescape() {
        assert_eq!(unescape("\\41lice").as_deref(), Ok("Alice"));
        assert!(unescape("\\61lice").is_err(), "an escaped byte that is kept is not canonical");
        assert!(unescape("\\4Blice").is_err(), "uppercase hex");
        assert!(unescape("Alice").is_err());
        assert!(unescape("a\\4").is_err());
        assert!(unescape("").is_err());
        assert_eq!(escape(""), Err(EscapeError::Empty));
    }

    proptest! {
        #[test]
        fn round_trips_mixed_case(name in "[a-zA-Z0-9 ._@\\\\/:'\"&<>éÄ漢-]{1,40}") {
            let local = escape(&name).expect("escapes");
            prop_assert!(local.bytes().all(|b| !b.is_ascii_uppercase() && b.is_ascii() && b != b'@' && b != b'/'));
            prop_assert_eq!(unescape(&local).expect("unescapes"), name.clone());
            // Case-folding the localpart (as a server does) changes nothing, so no two names collide there.
            prop_assert_eq!(local.to_lowercase(), local.clone());
            let flipped: String = name.chars().map(|c| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() }).collect();
            if flipped != name {
                prop_assert_ne!(escape(&flipped).expect("escapes"), local);
            }
        }
    }
}
