//! RPL_ISUPPORT (005) parameters the connector uses, and IRC case mapping.

/// How the server folds case when comparing nicks and channel names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaseMapping {
    /// `A-Z` ⇄ `a-z` only.
    Ascii,
    /// ASCII plus `[]\~` ⇄ `{}|^` (the RFC 1459 default).
    #[default]
    Rfc1459,
    /// ASCII plus `[]\` ⇄ `{}|`.
    Rfc1459Strict,
}

impl CaseMapping {
    /// Folds `s` to lowercase under this mapping.
    pub fn fold(self, s: &str) -> String {
        s.chars()
            .map(|c| match (self, c) {
                (_, 'A'..='Z') => c.to_ascii_lowercase(),
                (CaseMapping::Rfc1459 | CaseMapping::Rfc1459Strict, '[') => '{',
                (CaseMapping::Rfc1459 | CaseMapping::Rfc1459Strict, ']') => '}',
                (CaseMapping::Rfc1459 | CaseMapping::Rfc1459Strict, '\\') => '|',
                (CaseMapping::Rfc1459, '~') => '^',
                _ => c,
            })
            .collect()
    }

    /// True if `a` and `b` name the same nick or channel.
    pub fn eq(self, a: &str, b: &str) -> bool {
        self.fold(a) == self.fold(b)
    }
}

/// What the server told us in 005 lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isupport {
    /// Longest nick.
    pub nicklen: usize,
    /// Channel prefixes.
    pub chantypes: String,
    /// Case mapping.
    pub casemapping: CaseMapping,
    /// Network name, if given.
    pub network: Option<String>,
    /// The status prefixes a NAMES entry may carry (`PREFIX=(qaohv)~&@%+` gives `~&@%+`).
    pub prefixes: String,
}

impl Default for Isupport {
    fn default() -> Self {
        Self {
            nicklen: 9,
            chantypes: "#&".into(),
            casemapping: CaseMapping::Rfc1459,
            network: None,
            prefixes: "~&@%+".into(),
        }
    }
}

impl Isupport {
    /// Applies the tokens of one 005 line (`params[1..len-1]`: between our nick and the trailing text).
    pub fn apply(&mut self, tokens: &[String]) {
        for t in tokens {
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            match k {
                "NICKLEN" => {
                    if let Ok(n) = v.parse::<usize>() {
                        self.nicklen = n.clamp(1, 512);
                    }
                }
                "CHANTYPES" => self.chantypes = v.to_owned(),
                "CASEMAPPING" => {
                    self.casemapping = match v {
                        "ascii" => CaseMapping::Ascii,
                        "strict-rfc1459" => CaseMapping::Rfc1459Strict,
                        _ => CaseMapping::Rfc1459,
                    }
                }
                "NETWORK" => self.network = Some(v.to_owned()),
                // `(modes)prefixes`; an empty value: no prefixes. Characters that could start a nick do not count.
                "PREFIX" => {
                    let prefixes = v.split_once(')').map_or("", |(_, p)| p);
                    let starts_nick = |c: char| "[]\\`_^{|}".contains(c);
                    self.prefixes = prefixes.chars().filter(|&c| c.is_ascii_punctuation() && !starts_nick(c)).collect();
                }
                _ => {}
            }
        }
    }

    /// True if `name` is a channel name on this server.
    pub fn is_channel(&self, name: &str) -> bool {
        name.chars().next().is_some_and(|c| self.chantypes.contains(c))
    }
}

/// Checks a nick: 1..=`max` bytes, no spaces, commas, `*`, `?`, `!`, `@`, or control characters, and not starting
/// with a digit, `-`, `#`, `&` or `:`.
pub fn valid_nick(nick: &str, max: usize) -> bool {
    !nick.is_empty()
        && nick.len() <= max
        && !nick.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '#' | '&' | ':' | '$'))
        && !nick.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '*' | '?' | '!' | '@' | '.'))
}

/// Checks a channel name: starts with a channel prefix, no spaces, commas, BEL or control characters, ≤ 200 bytes.
pub fn valid_channel(name: &str, isupport: &Isupport) -> bool {
    isupport.is_channel(name)
        && name.len() > 1
        && name.len() <= 200
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_mappings_fold() {
        assert!(CaseMapping::Rfc1459.eq("Nick[a]~", "nick{a}^"));
        assert!(!CaseMapping::Ascii.eq("a[", "a{"));
        assert!(CaseMapping::Rfc1459Strict.eq("A\\", "a|"));
        assert!(!CaseMapping::Rfc1459Strict.eq("~", "^"));
    }

    #[test]
    fn applies_tokens() {
        let mut i = Isupport::default();
        let toks: Vec<String> =
            ["NICKLEN=31", "CHANTYPES=#", "CASEMAPPING=ascii", "NETWORK=Test", "EXCEPTS"].map(String::from).to_vec();
        i.apply(&toks);
        assert_eq!((i.nicklen, i.chantypes.as_str(), i.casemapping), (31, "#", CaseMapping::Ascii));
        assert!(i.is_channel("#x") && !i.is_channel("&x"));
        assert!(valid_channel("#rust", &i) && !valid_channel("#a b", &i) && !valid_channel("#a,b", &i));
        assert!(valid_nick("alice_", 9) && !valid_nick("al ice", 9) && !valid_nick("1x", 9) && !valid_nick("a", 0));
        assert_eq!(i.prefixes, "~&@%+", "the default");
        i.apply(&["PREFIX=(Yqaohv)!~&@%+".to_owned()]);
        assert_eq!(i.prefixes, "!~&@%+");
        i.apply(&["PREFIX=(ov)@+[".to_owned()]);
        assert_eq!(i.prefixes, "@+", "a character that may start a nick is no prefix");
        i.apply(&["PREFIX=".to_owned()]);
        assert_eq!(i.prefixes, "", "no prefixes");
    }
}
