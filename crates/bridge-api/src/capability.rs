//! What a network can express, graded per feature (design.md §6), and its hard limits.
//!
//! The grades are one list used everywhere — in connectors, in the conformance kit and in the docs:
//!
//! | grade | meaning |
//! |---|---|
//! | [`Grade::Full`] | round-trips: the feature arrives as the same feature on the other side |
//! | [`Grade::Degraded`] | arrives in a documented fallback form (e.g. a reply as a quote, an edit as `s/a/b/`) |
//! | [`Grade::Notice`] | not expressible; a short notice is posted instead |
//! | [`Grade::Unsupported`] | refused; the sending side is told where it could not be delivered |

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How well a network can carry one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    /// Refused; the sender is told.
    Unsupported,
    /// A short notice is posted instead.
    Notice,
    /// Arrives in a documented fallback form.
    Degraded,
    /// Round-trips.
    Full,
}

/// The features a network may carry, each graded separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Rich text (markdown): bold, italics, code, links.
    Formatting,
    /// Replies to a specific message.
    Replies,
    /// Edits of an earlier message.
    Edits,
    /// Deletion (retraction, redaction) of an earlier message.
    Deletes,
    /// Reactions to a message.
    Reactions,
    /// Files and media.
    Attachments,
    /// Typing notifications.
    Typing,
    /// Join/leave/kick events.
    Membership,
    /// Messages with more than one line.
    MultiLine,
    /// Mentions of a user (MIMI user links, draft-ietf-mimi-content §5.4): a notification on networks that have
    /// one (Matrix `m.mentions`, XMPP references), the name as plain text on the others.
    Mentions,
}

impl Feature {
    /// Every feature, in a fixed order.
    pub const ALL: [Feature; 10] = [
        Feature::Formatting,
        Feature::Replies,
        Feature::Edits,
        Feature::Deletes,
        Feature::Reactions,
        Feature::Attachments,
        Feature::Typing,
        Feature::Membership,
        Feature::MultiLine,
        Feature::Mentions,
    ];
}

/// Hard limits of a network or account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest text (in UTF-8 bytes) one message may carry before the connector must split or truncate it.
    pub max_text_bytes: Option<usize>,
    /// Most lines one bridged message may become on this network before it is shortened.
    pub max_lines: Option<usize>,
    /// Largest attachment the network accepts, in bytes.
    pub max_attachment_bytes: Option<u64>,
}

/// A network's (or one account's) capabilities: a grade per feature plus limits.
///
/// Features not set explicitly are [`Grade::Unsupported`]. A grade is what the network shows of a feature coming
/// from elsewhere and, unless [`Capabilities::saying`] sets it apart, what it says of it itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    grades: BTreeMap<Feature, Grade>,
    /// What the network says of a feature where that differs from what it shows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    says: BTreeMap<Feature, Grade>,
    /// The network's hard limits.
    pub limits: Limits,
}

impl Capabilities {
    /// Capabilities with every feature unsupported and no limits.
    pub fn none() -> Self {
        Self::default()
    }

    /// Capabilities with every feature at `grade`.
    pub fn all(grade: Grade) -> Self {
        let mut c = Self::default();
        for f in Feature::ALL {
            c.grades.insert(f, grade);
        }
        c
    }

    /// Builder: sets the grade of one feature.
    pub fn with(mut self, feature: Feature, grade: Grade) -> Self {
        self.grades.insert(feature, grade);
        self
    }

    /// Builder: sets what the network says of `feature` apart from what it shows (IRC in relay mode passes on its
    /// users' joins and parts but shows no one else's).
    pub fn saying(mut self, feature: Feature, grade: Grade) -> Self {
        self.says.insert(feature, grade);
        self
    }

    /// Builder: sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The grade of `feature`: what the network shows of it.
    pub fn grade(&self, feature: Feature) -> Grade {
        self.grades.get(&feature).copied().unwrap_or(Grade::Unsupported)
    }

    /// What the network says of `feature` itself.
    pub fn says(&self, feature: Feature) -> Grade {
        self.says.get(&feature).copied().unwrap_or_else(|| self.grade(feature))
    }

    /// Every feature with its grade, in [`Feature::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Feature, Grade)> + '_ {
        Feature::ALL.into_iter().map(|f| (f, self.grade(f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_features_are_unsupported() {
        let c = Capabilities::none().with(Feature::Replies, Grade::Degraded);
        assert_eq!(c.grade(Feature::Replies), Grade::Degraded);
        assert_eq!(c.grade(Feature::Edits), Grade::Unsupported);
        assert_eq!(Capabilities::all(Grade::Full).iter().filter(|(_, g)| *g == Grade::Full).count(), 10);
        assert!(Grade::Full > Grade::Degraded && Grade::Degraded > Grade::Notice && Grade::Notice > Grade::Unsupported);
        assert_eq!(c.says(Feature::Replies), Grade::Degraded, "says what it shows unless told otherwise");
        let irc = Capabilities::none().saying(Feature::Membership, Grade::Full);
        assert_eq!((irc.says(Feature::Membership), irc.grade(Feature::Membership)), (Grade::Full, Grade::Unsupported));
    }
}
